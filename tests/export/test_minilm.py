"""The PEFT round trip on the real packaged MiniLM (slow): its default head (mean pooling, linear) beside
the adapter, and the cls/mlp head inside it (AutoModelForSequenceClassification)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from peft import PeftModel

from atlas_pl.export import export_job, load_head
from atlas_pl.models.catalog import REGISTRY
from atlas_pl.models.files import model_dir

from .conftest import write_job

pytestmark = pytest.mark.slow

TEXTS = [
    "a gripping, beautifully acted film",
    "the plot never comes together and the jokes fall flat",
    "fine.",
]


@pytest.mark.parametrize(("pooling", "head"), [("mean", "linear"), ("cls", "mlp")])
def test_minilm_round_trip(tmp_path: Path, pooling: str, head: str) -> None:
    clients = ((2, (4, 16, 8, 4, 2, 8), 2), (4, (8, 2, 2, 16, 4, 4), 2))
    job = write_job(tmp_path / "job", "minilm", clients=clients, pooling=pooling, head=head, alpha=8.0)
    written = export_job(job.dir, tmp_path / "out")  # with the export's own check
    assert all(w.max_diff is not None and w.max_diff <= 1e-5 for w in written)
    folder = model_dir(REGISTRY["minilm"])
    assert folder is not None and not (tmp_path / "out" / "base").exists()  # the package folder is named
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    for client, atlas_model in job.models.items():
        client_dir = tmp_path / "out" / f"client_{client}"
        config = json.loads((client_dir / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
        info = json.loads((client_dir / "atlas_export.json").read_text())
        assert info["base"] == str(folder) and info["base_hub_id"] == config["base_model_name_or_path"]
        assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in (client_dir / "README.md").read_text()
        with torch.no_grad():
            want = atlas_model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
            if head == "mlp":
                base = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
                got = PeftModel.from_pretrained(base, client_dir).eval()(**enc).logits
            else:
                model = PeftModel.from_pretrained(transformers.AutoModel.from_pretrained(folder), client_dir)
                hidden = model.eval()(**enc).last_hidden_state
                got = load_head(client_dir)(hidden, enc["attention_mask"])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
