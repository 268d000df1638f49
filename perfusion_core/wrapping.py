"""A method of one object replaced by a wrapper, and put back exactly: what every host does to its text encoding."""

from __future__ import annotations

from collections.abc import Callable


class MethodWrap:
    """`obj.name` replaced by `wrap(obj.name)` on the instance until `remove()`. The instance attribute that was there
    (another extension's wrapper) comes back, or, where there was none, the class's own method shows again; a wrapper
    installed over ours later is left alone."""

    def __init__(self, obj: object, name: str, wrap: Callable[[Callable], Callable]) -> None:
        self.obj, self.name = obj, name
        self.replaced = vars(obj).get(name)
        self.wrapper = wrap(getattr(obj, name))
        setattr(obj, name, self.wrapper)

    def remove(self) -> None:
        if vars(self.obj).get(self.name) is self.wrapper:
            if self.replaced is None:
                delattr(self.obj, self.name)
            else:
                setattr(self.obj, self.name, self.replaced)
