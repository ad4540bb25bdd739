import pytest

from lowtune.evaluate import last_integer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("12 + 34 = 46", 46),
        ("The answer is 1,234.", 1234),
        ("It is -7", -7),
        ("no digits here", None),
        ("3 apples and 4 pears: 7 fruit", 7),
        ("1,2,3", 3),
    ],
)
def test_last_integer(text, expected):
    assert last_integer(text) == expected
