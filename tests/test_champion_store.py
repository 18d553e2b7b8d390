"""`champion` leaves out a candidate whose registered version is not its model in this store
(versions are per store: a queued experiment on a server reuses a cached stage's version)."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from clrpipe.pipeline.stages import champion


def test_a_version_from_another_store_is_left_out_with_a_note(tmp_path, capsys):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    stranger = {"registered_model": "clrpipe-cardio", "model_version": "3",
                "serving_model_uri": "models:/m-elsewhere", "final_val_accuracy": 0.9}
    assert not champion._here(client, "compare", stranger)
    assert "compare's clrpipe-cardio version 3 is not in this tracking store" in \
        capsys.readouterr().err


def test_a_version_of_this_store_and_an_unregistered_candidate_count(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_registered_model("clrpipe-cardio")
    run = client.create_run(client.create_experiment("e"))
    version = client.create_model_version("clrpipe-cardio", "runs:/x/model", run.info.run_id)
    mine = {"registered_model": "clrpipe-cardio", "model_version": version.version}
    assert champion._here(client, "train_clr", mine)
    assert champion._here(client, "train_clr", {"final_val_accuracy": 0.5})
