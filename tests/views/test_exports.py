"""drope_lens.views exports exactly its modules' own ``__all__`` lists."""

import drope_lens.views as views
from drope_lens.views import attention, figures, html, maps


def test_views_exports_are_the_modules_lists():
    modules = (attention, figures, html, maps)
    assert views.__all__ == [name for m in modules for name in m.__all__]
    assert len(set(views.__all__)) == len(views.__all__)
    for m in modules:
        for name in m.__all__:
            assert getattr(views, name) is getattr(m, name)
