"""Start a local stack for a test, and stop it whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from services.tools.local_stack import LocalStack, StackConfig, StackError


@contextmanager
def started_stack(config: StackConfig, what: str = "the local stack") -> Iterator[LocalStack]:
    """The stack of ``config``, up (the test fails, quoting the log, when it does not start),
    then down."""
    stack = LocalStack(config)
    try:
        stack.up()
    except StackError as exc:
        stack.down()
        pytest.fail(f"{what} did not start: {exc}")
    try:
        yield stack
    finally:
        stack.down()
