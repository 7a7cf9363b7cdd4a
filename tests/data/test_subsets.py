from collections import Counter
from pathlib import Path

import pytest

from vldistill.data.examples import TaskExample
from vldistill.data.subsets import apply_manifest, low_shot, write_manifest
from vldistill.errors import DataError


def _examples(groups: dict[str, int], pair: bool = False) -> list[TaskExample]:
    out = []
    n = 0
    for g, count in groups.items():
        for _ in range(count):
            rid = f"r{n:03d}"
            stages = ("qa", "qar") if pair else ("",)
            for st in stages:
                uid = f"{rid}/{st}" if st else rid
                out.append(
                    TaskExample(uid=uid, task="x", images=(Path("i.jpg"),), texts=("t",), group=g, meta={"record": rid})
                )
            n += 1
    return out


def test_fraction_is_stratified_and_exact():
    ex = _examples({"yes": 60, "no": 30, "2": 10})
    sub = low_shot(ex, fraction=0.1, seed=0)
    # 10% of 100 records, proportional to the strata: 6 / 3 / 1
    assert Counter(e.group for e in sub) == {"yes": 6, "no": 3, "2": 1}


def test_largest_remainder_allocation():
    ex = _examples({"a": 5, "b": 5, "c": 5})
    sub = low_shot(ex, fraction=0.2, seed=1)  # 3 records: one per stratum
    assert Counter(e.group for e in sub) == {"a": 1, "b": 1, "c": 1}


def test_per_group_caps_at_stratum_size():
    ex = _examples({"a": 5, "b": 2})
    sub = low_shot(ex, per_group=3, seed=0)
    assert Counter(e.group for e in sub) == {"a": 3, "b": 2}


def test_seeded_deterministic_and_order_independent():
    ex = _examples({"a": 40, "b": 40})
    a = {e.uid for e in low_shot(ex, fraction=0.25, seed=3)}
    b = {e.uid for e in low_shot(list(reversed(ex)), fraction=0.25, seed=3)}
    c = {e.uid for e in low_shot(ex, fraction=0.25, seed=4)}
    assert a == b
    assert a != c


def test_records_stay_together():
    ex = _examples({"0": 10, "1": 10}, pair=True)
    sub = low_shot(ex, fraction=0.5, seed=0)
    assert len(sub) == 20  # 10 records x (qa, qar)
    per_record = Counter(e.meta["record"] for e in sub)
    assert set(per_record.values()) == {2}


def test_manifest_round_trip(tmp_path: Path):
    ex = _examples({"a": 20, "b": 20})
    sub = low_shot(ex, fraction=0.3, seed=7)
    path = tmp_path / "run" / "subset.json"
    write_manifest(path, sub, fraction=0.3, seed=7)
    again = apply_manifest(path, ex)
    assert [e.uid for e in again] == [e.uid for e in sub]


def test_manifest_errors_name_the_file(tmp_path: Path):
    ex = _examples({"a": 4})
    bad = tmp_path / "m.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="m.json"):
        apply_manifest(bad, ex)
    write_manifest(bad, _examples({"a": 6}))
    with pytest.raises(DataError, match="r00[45]"):
        apply_manifest(bad, ex)


def test_invalid_arguments():
    ex = _examples({"a": 4})
    with pytest.raises(ValueError):
        low_shot(ex, seed=0)
    with pytest.raises(ValueError):
        low_shot(ex, fraction=1.5)
