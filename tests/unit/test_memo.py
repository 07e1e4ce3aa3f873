"""What the operator remembers of its reads (operator/grpo_operator/controller/memo.py): what was found, for a while; never a miss."""

from __future__ import annotations

from grpo_operator.controller.memo import FoundMemo


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_found_is_remembered_for_a_while_and_a_miss_is_read_again_every_time():
    clock, reads = Clock(), []
    memo: FoundMemo[str, bool] = FoundMemo(60, clock)
    answers = iter([None, None, True, False])

    def read() -> bool | None:
        reads.append(clock.now)
        return next(answers)

    assert memo.get("svc", read) is None and memo.get("svc", read) is None  # missing: read each time
    assert memo.get("svc", read) is True  # appeared
    clock.now = 59
    assert memo.get("svc", read) is True and len(reads) == 3  # trusted, not read
    clock.now = 60
    assert memo.get("svc", read) is False and len(reads) == 4  # expired: read again


def test_unusable_hit_is_read_again_and_forget_drops_it():
    clock = Clock()
    memo: FoundMemo[str, set[str]] = FoundMemo(5, clock)
    memo.get("secret", lambda: {"a"})
    assert memo.get("secret", lambda: {"a", "b"}, usable=lambda keys: "b" in keys) == {"a", "b"}
    memo.forget("secret")
    assert memo.get("secret", lambda: {"c"}) == {"c"}


def test_expired_entries_of_keys_never_read_again_are_purged():
    clock = Clock()
    memo: FoundMemo[str, bool] = FoundMemo(10, clock)
    for job in range(100):
        memo.get(f"gone-{job}", lambda: True)
    clock.now = 11
    memo.get("live", lambda: True)
    assert list(memo._items) == ["live"]
