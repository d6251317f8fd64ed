from __future__ import annotations

import pytest

from atlas_pl.data import GLUE_TASKS, LOCAL_TASKS, DataError, check_task_names, is_synthetic, task_spec
from atlas_pl.data.tasks import synthetic_index


def test_glue_specs():
    assert task_spec("sst2").primary_metric == "accuracy"
    assert task_spec("cola").primary_metric == "mcc"
    assert task_spec("mrpc").primary_metric == "f1"
    assert task_spec("qqp").primary_metric == "f1"
    assert task_spec("rte").primary_metric == "accuracy"
    assert task_spec("qnli").text_fields == ("question", "sentence")
    assert task_spec("mnli").num_labels == 3 and len(task_spec("mnli").label_names) == 3
    assert set(LOCAL_TASKS) <= set(GLUE_TASKS)
    assert "mnli" not in LOCAL_TASKS


def test_synthetic_names():
    assert is_synthetic("synthetic0") and is_synthetic("synthetic12")
    for bad in ("synthetic", "synthetic01", "synthetic-1", "Synthetic1", "sst2"):
        assert not is_synthetic(bad)
    assert synthetic_index("synthetic7") == 7
    spec = task_spec("synthetic3")
    assert (spec.name, spec.num_labels, spec.primary_metric) == ("synthetic3", 2, "accuracy")


@pytest.mark.parametrize("name", ["sst-2", "synthetic", "stsb", "SST2"])
def test_unknown_task_names_list_the_valid_ones(name):
    with pytest.raises(DataError, match=r"sst2, cola, mrpc.*synthetic<N>"):
        task_spec(name)


def test_check_task_names():
    check_task_names(["sst2", "synthetic0", "synthetic1"])
    with pytest.raises(DataError, match=r"\['nope'\].*valid tasks: sst2"):
        check_task_names(["sst2", "nope"])
    with pytest.raises(DataError, match="duplicate"):
        check_task_names(["sst2", "sst2"])
    with pytest.raises(DataError, match="non-empty"):
        check_task_names([])
