"""Exception text as one line, for logs and stderr."""

from __future__ import annotations

import pytest

from tornado_echo.errors import StoreError, one_line


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (OSError("connection refused\nIs the server running?"), "OSError: connection refused"),
        (StoreError("  padded  \n"), "StoreError: padded"),
        (RuntimeError(), "RuntimeError"),
        (ValueError("\n\n"), "ValueError"),
    ],
)
def test_type_and_first_line(exc: BaseException, expected: str) -> None:
    assert one_line(exc) == expected
