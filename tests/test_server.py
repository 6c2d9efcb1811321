"""`k5tune server`: the API against the real app, real loader, real scan and real `k5tune train` runs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from unittest.mock import patch

import pytest

from k5tune.config.schema import TrainConfig
from k5tune.data.synthetic import write_clip
from k5tune.hostmem import HostMemory
from k5tune.server.app import create_app
from k5tune.server.auth import server_token
from tests.helpers import (
    fake_nvidia_smi,
    make_project,
    model_root,
    read_events,
    serve,
    wait_finished,
    write_config,
)

# steps are ~0.1 s on the tiny model: 2000 steps outlast any test, which stops the run itself
LONG_RUN = {"max_train_steps": 2000, "checkpointing_steps": 1000, "train_batch_size": 2}


@pytest.fixture
def project(tmp_path, tiny_model_dir) -> Path:
    return make_project(tmp_path / "project", tiny_model_dir, LONG_RUN)


# --- schema and config ----------------------------------------------------------------------------


def test_schema_is_the_config_schema(project):
    with serve(project) as client:
        data = client.get("/api/schema").json()
    fields = {f["name"]: f for f in data["config"]}
    assert list(fields) == list(TrainConfig.model_fields)  # every key, in the schema's order
    rank = fields["lora_rank"]
    assert (rank["kind"], rank["default"], rank["gt"], rank["section"]) == ("int", 16, 0, "LoRA")
    assert rank["description"] == TrainConfig.model_fields["lora_rank"].description
    assert fields["lr_scheduler"]["kind"] == "enum" and "cosine" in fields["lr_scheduler"]["choices"]
    assert fields["max_train_steps"]["nullable"] and fields["frame_rate"]["aliases"] == ["framerate"]
    assert fields["tread_config"]["kind"] == "json" and fields["lora_target_modules"]["kind"] == "list"
    video = {f["name"]: f for f in data["datasets"]["video"]}
    assert video["instance_data_dir"]["required"] and video["resolution"]["default"] == 512
    assert {f["name"] for f in data["datasets"]["video_options"]} >= {"num_frames", "min_frames", "bucket_strategy"}
    assert data["json_schema"]["properties"]["lora_rank"]["default"] == 16


def test_config_is_read_checked_by_the_loader_and_saved(project):
    path = project / "config" / "config.json"
    with serve(project) as client:
        loaded = client.get("/api/config").json()
        assert loaded["exists"] and loaded["values"]["max_train_steps"] == 2000 and loaded["error"] is None

        # a mistake is reported at its field, in the loader's words, and nothing is written
        before = path.read_text()
        bad = client.put("/api/config", json={"values": {**loaded["values"], "validation_num_video_frames": 60}})
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["field"] == "validation_num_video_frames" and "57 and 61" in error["message"]
        assert path.read_text() == before
        typo = client.put("/api/config", json={"values": {"validaton_guidance": 4}, "validate_only": True}).json()
        assert "did you mean 'validation_guidance'" in typo["error"]["message"]

        # an alias is saved under its field name; validate_only writes nothing
        values = {**loaded["values"], "framerate": 12, "lora_rank": 8}
        assert client.put("/api/config", json={"values": values, "validate_only": True}).json()["saved"] is False
        assert path.read_text() == before
        saved = client.put("/api/config", json={"values": values})
        assert saved.status_code == 200 and saved.json()["saved"]
        written = json.loads(path.read_text())
        assert written["frame_rate"] == 12 and written["lora_rank"] == 8 and "framerate" not in written
        assert client.get("/api/config").json()["values"]["lora_rank"] == 8

        # a new file elsewhere in the project
        assert client.put("/api/config", json={"path": "config/other.json", "values": {"lora_rank": 4}}).status_code == 200
        assert json.loads((project / "config" / "other.json").read_text()) == {"lora_rank": 4}


def test_dataset_file_and_preview_with_good_and_bad_clips(project):
    videos = project / "datasets" / "videos"
    write_clip(videos / "short.mp4", frames=8, width=64, height=48)
    (videos / "short.txt").write_text("too short\n")
    write_clip(videos / "nocaption.mp4", frames=24, width=64, height=48)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "empty.txt").write_text("empty\n")
    with serve(project) as client:
        datasets = client.get("/api/datasets").json()
        assert datasets["path"] == "config/multidatabackend.json" and datasets["backends"][0]["id"] == "clips"

        preview = client.post("/api/datasets/preview", json={"backends": datasets["backends"]})
        assert preview.status_code == 200, preview.text
        data = preview.json()
        assert (data["found"], data["used"]) == (7, 4)
        assert data["buckets"] == {"64x48@17": 4}
        assert data["clips"][0]["path"] == "datasets/videos/clip_000.mp4" and data["clips"][0]["caption"]
        reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
        assert reasons == {"short.mp4": "too_short", "nocaption.mp4": "missing_caption", "empty.mp4": "empty_file"}
        assert all(s["detail"] and s["hint"] for s in data["skipped"])

        thumb = client.get("/api/thumbnail", params={"path": data["clips"][0]["path"]})
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.content[:2] == b"\xff\xd8"
        assert client.get("/api/thumbnail", params={"path": "datasets/videos/empty.mp4"}).status_code == 415

        # the form's unsaved backends are checked by the loader: the error names the backend and key
        broken = json.loads(json.dumps(datasets["backends"]))
        broken[0]["video"]["num_frames"] = 60
        bad = client.post("/api/datasets/preview", json={"backends": broken})
        assert bad.status_code == 422
        assert bad.json()["error"]["backend"] == 0 and bad.json()["error"]["key"] == "video.num_frames"
        assert client.put("/api/datasets", json={"backends": broken}).status_code == 422

        # saved dataset file; the preview then reads it
        fewer = json.loads(json.dumps(datasets["backends"]))
        fewer[0]["video"]["num_frames"] = 21
        assert client.put("/api/datasets", json={"backends": fewer}).status_code == 200
        assert json.loads((project / "config" / "multidatabackend.json").read_text())[0]["video"]["num_frames"] == 21
        assert client.post("/api/datasets/preview", json={}).json()["buckets"] == {"64x48@21": 4}


# --- runs -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_streams_progress_queues_and_stops_cleanly(project):
    with serve(project) as client:
        first = client.post("/api/runs", json={})
        assert first.status_code == 201 and first.json()["status"] == "running"
        run_id = first.json()["id"]

        events = read_events(client, run_id, lambda e, d: e == "metrics" and d["summary"].get("step", 0) >= 2)
        kinds = {e for e, _ in events}
        assert {"status", "log", "metrics", "outputs"} <= kinds
        summary = events[-1][1]["summary"]
        assert summary["total_steps"] == 2000 and summary["loss"] > 0 and summary["lr"] > 0
        assert summary["it_per_s"] > 0 and summary["eta_seconds"] > 0 and "gpu_peak_gib" in summary
        assert any("Dataset: 4 file(s) found" in line for e, d in events if e == "log" for line in d["lines"])

        # a second run on the same output folder waits; its config is the one of when it was queued
        write_config(project, lora_rank=0)
        queued = client.post("/api/runs", json={}).json()
        assert queued["status"] == "queued" and queued["config_snapshot"]["config"]["lora_rank"] == 0
        write_config(project, output_dir="elsewhere")
        other_folder = client.post("/api/runs", json={}).json()
        assert other_folder["status"] == "running"  # another folder: no waiting

        stopping = client.post(f"/api/runs/{run_id}/stop").json()
        assert stopping["status"] == "stopping"
        end = read_events(client, run_id, lambda e, d: e == "end")[-1][1]
        assert (end["status"], end["exit_code"]) == ("stopped", 0)
        outputs = client.get("/api/outputs", params={"dir": "output"}).json()
        assert outputs["checkpoints"], "a clean stop saves a checkpoint"
        step = outputs["checkpoints"][-1]["step"]
        assert (project / "output" / f"checkpoint-{step}" / "pytorch_lora_weights.safetensors").is_file()

        # the queued run started when the folder was free, and failed on its snapshot's bad value
        second = wait_finished(client, queued["id"])
        assert second["started_at"] >= end["ended_at"]
        assert second["status"] == "failed" and second["exit_code"] == 2 and "lora_rank" in second["error"]
        assert wait_finished(client, other_folder["id"])["status"] == "failed"

        # resume continues from the checkpoint
        write_config(project, output_dir="output", lora_rank=4)
        resumed = client.post("/api/runs", json={"resume": True}).json()
        assert resumed["resume"] and resumed["status"] == "running"
        read_events(client, resumed["id"], lambda e, d: e == "log" and any("resumed from" in x for x in d["lines"]))
        client.post(f"/api/runs/{resumed['id']}/stop")
        assert wait_finished(client, resumed["id"])["status"] == "stopped"

        runs = client.get("/api/runs").json()
        assert [r["id"] for r in runs] == sorted((r["id"] for r in runs), reverse=True)


@pytest.mark.slow
def test_crashing_run_is_recorded_as_failed_and_the_server_lives_on(project):
    write_config(project, lora_rank=0)
    with serve(project) as client:
        run_id = client.post("/api/runs", json={}).json()["id"]
        run = wait_finished(client, run_id)
        assert run["status"] == "failed" and run["exit_code"] == 2
        assert run["error"].startswith("k5tune: error:") and "lora_rank" in run["error"]
        assert any("lora_rank" in line for line in run["log_tail"])
        assert "lora_rank" in client.get(f"/api/runs/{run_id}/log").text
        end = read_events(client, run_id, lambda e, d: e == "end")
        assert end[-1][1]["status"] == "failed"
        assert client.get("/api/info").status_code == 200
        assert client.get("/api/runs/999").status_code == 404

        # killed from outside (as the out-of-memory killer does): failed, with the signal named
        write_config(project, lora_rank=4)
        run = client.post("/api/runs", json={}).json()
        read_events(client, run["id"], lambda e, d: e == "log" and any("Dataset:" in x for x in d["lines"]))
        os.kill(run["pid"], signal.SIGKILL)
        killed = wait_finished(client, run["id"])
        assert (killed["status"], killed["exit_code"]) == ("failed", -signal.SIGKILL)
        assert killed["error"] == "killed by signal SIGKILL"
        assert client.get("/api/runs").status_code == 200


def test_history_survives_a_restart(project):
    write_config(project, lora_rank=0)
    with serve(project) as client:
        crashed = wait_finished(client, client.post("/api/runs", json={}).json()["id"])
    # a run the database still calls running whose process is gone (the server died with it)
    db = sqlite3.connect(project / ".k5tune" / "server.sqlite3")
    with db:
        db.execute("INSERT INTO runs (output_dir, config_path, status, created_at, log_path, pid) "
                   "VALUES (?, 'config/config.json', 'running', '2026-01-01T00:00:00+00:00', ?, 999999999)",
                   (str(project / "output"), str(project / "missing.log")))
    db.close()
    with serve(project) as client:
        runs = {r["id"]: r for r in client.get("/api/runs").json()}
        assert runs[crashed["id"]]["status"] == "failed" and runs[crashed["id"]]["exit_code"] == 2
        assert runs[crashed["id"]]["config_snapshot"]["config"]["lora_rank"] == 0
        assert "lora_rank" in client.get(f"/api/runs/{crashed['id']}/log").text
        orphan = max(runs)
        assert runs[orphan]["status"] == "failed" and "server was down" in runs[orphan]["error"]


# --- security ----------------------------------------------------------------------------------------


def test_token_is_required_on_every_api_call_when_set(project):
    assert server_token("127.0.0.1", None) is None and server_token("localhost", None) is None
    assert server_token("127.0.0.1", "given") == "given"
    generated = server_token("0.0.0.0", None)
    assert generated and len(generated) >= 24 and generated != server_token("0.0.0.0", None)

    with serve(project, token="s3cret") as client:
        assert client.get("/api/config").status_code == 401
        assert client.get("/api/config").headers["www-authenticate"] == "Bearer"
        assert client.get("/api/config", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/config", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/api/config", params={"token": "s3cret"}).status_code == 200
        assert client.post("/api/runs", json={}).status_code == 401
        assert client.get("/api/runs/1/events").status_code == 401
        assert client.get("/api/files", params={"path": "config/config.json"}).status_code == 401
        assert client.get("/").status_code == 200  # the page itself holds nothing secret; it asks for the token
        assert client.get("/static/app.js").status_code == 200

    with serve(project) as client:  # loopback without a token: no check
        assert client.get("/api/config").status_code == 200
        # but only for loopback host names, and changes only from the page's own origin
        assert client.get("/api/config", headers={"Host": "evil.example:8001"}).status_code == 403
        put = client.put("/api/config", json={"values": {}, "validate_only": True},
                         headers={"Origin": "http://evil.example"})
        assert put.status_code == 403
        same = client.put("/api/config", json={"values": {}, "validate_only": True},
                          headers={"Origin": "http://127.0.0.1"})
        assert same.status_code == 200


def test_paths_outside_the_project_are_refused(project, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    os.symlink(secret, project / "link.txt")
    os.symlink(tmp_path, project / "linkdir")
    video = write_clip(project / "output" / "validation" / "step-000002" / "prompt-00.mp4", frames=24)
    with serve(project) as client:
        for path in ["../secret.txt", str(secret), "link.txt", "linkdir/secret.txt", "config/../../secret.txt",
                     "/etc/passwd"]:
            assert client.get("/api/files", params={"path": path}).status_code == 403, path
            assert client.get("/api/thumbnail", params={"path": path}).status_code == 403, path
        assert client.get("/api/config", params={"path": "../secret.txt"}).status_code == 403
        assert client.put("/api/config", json={"path": str(tmp_path / "evil.json"), "values": {}}).status_code == 403
        assert not (tmp_path / "evil.json").exists()
        assert client.put("/api/datasets", json={"path": "../evil.json", "backends": []}).status_code == 403
        assert client.get("/api/datasets", params={"path": "/etc/hostname"}).status_code == 403
        assert client.get("/api/outputs", params={"dir": ".."}).status_code == 403
        assert client.post("/api/runs", json={"config": "../secret.txt"}).status_code == 403
        outside = client.get("/api/datasets").json()["backends"]
        outside[0]["instance_data_dir"] = str(tmp_path)
        assert client.post("/api/datasets/preview", json={"backends": outside}).status_code == 403
        write_config(project, output_dir=str(tmp_path / "out"))
        assert client.post("/api/runs", json={}).status_code == 403

        # inside: served, videos with their type and byte ranges (what <video> needs to seek)
        assert client.get("/api/files", params={"path": "config/config.json"}).status_code == 200
        full = client.get("/api/files", params={"path": "output/validation/step-000002/prompt-00.mp4"})
        assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
        assert full.headers["accept-ranges"] == "bytes" and full.content == video.read_bytes()
        part = client.get("/api/files", params={"path": "output/validation/step-000002/prompt-00.mp4"},
                          headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == video.read_bytes()[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{video.stat().st_size}"
        gallery = client.get("/api/outputs", params={"dir": "output"}).json()
        assert gallery["videos"] == [{"step": 2, "name": "prompt-00.mp4", "prompt": "",
                                      "path": "output/validation/step-000002/prompt-00.mp4"}]


# --- a run's state from its events ---------------------------------------------------------------------


def test_run_outcome_comes_from_its_events_not_its_log(tmp_path):
    from k5tune.server.runs import RunEvents, outcome, read_state
    from k5tune.server.runs.store import Run

    folder = tmp_path / "run-000001"
    folder.mkdir()
    # the log says what a clean stop prints; the events say the run failed: the events decide
    (folder / "train.log").write_text("trained 5 steps\nstopped cleanly\noutputs in output\n")
    run = Run(id=1, output_dir=str(tmp_path), config_path="config/config.json", resume=False, status="running",
              created_at="", started_at="", ended_at=None, exit_code=None, log_path=str(folder / "train.log"),
              config_snapshot="{}", error=None, pid=None, stop_requested=False)
    events = [{"event": "run", "time": 1.0}, {"event": "stage", "name": "training", "total": 10},
              {"event": "training", "total_steps": 10, "start_step": 0},
              {"event": "progress", "stage": "training", "done": 2, "total": 10, "time": 10.0},
              {"event": "step", "step": 3, "loss": 0.5, "time": 10.5},
              {"event": "progress", "stage": "training", "done": 6, "total": 10, "time": 12.0},
              {"event": "end", "outcome": "failed", "error": "RuntimeError: boom\nmore", "message": "boom",
               "user_error": False}]
    run.events_path.write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "cut sh')
    state = read_state(run.events_path)
    assert (state.total_steps, state.it_per_s, state.steps) == (10, 2.0, [{"step": 3, "loss": 0.5}])
    assert outcome(run, None, state) == ("failed", "RuntimeError: boom")
    assert outcome(run, 1, state) == ("failed", "RuntimeError: boom")

    user = {**events[-1], "error": "ConfigError: bad rank", "message": "bad rank", "user_error": True}
    state.end = user
    assert outcome(run, 2, state) == ("failed", "k5tune: error: bad rank")
    state.end = {"event": "end", "outcome": "stopped"}
    assert outcome(run, None, state) == ("stopped", None) and outcome(run, 0, state) == ("stopped", None)
    state.end = {"event": "end", "outcome": "completed"}
    assert outcome(run, None, state) == ("completed", None)
    # no events at all: how the process ended
    assert outcome(run, None, RunEvents(tmp_path / "none").state) == ("failed", "ended while the server was down")
    assert outcome(run, -9, RunEvents(tmp_path / "none").state) == ("failed", "killed by signal SIGKILL")
    run.stop_requested = True
    assert outcome(run, 130, RunEvents(tmp_path / "none").state) == ("stopped", None)


# --- never losing a user's file (#22) ------------------------------------------------------------------


def test_a_config_that_does_not_parse_is_never_saved_over_and_every_save_keeps_the_previous(project):
    path = project / "config" / "config.json"
    good = path.read_text()
    broken = good.replace('"lora_rank": 4,', '"lora_rank": 4,,')
    allowed = model_root(project)  # read before the file breaks
    path.write_text(broken)
    with serve(project, allowed_roots=allowed) as client:
        loaded = client.get("/api/config").json()
        assert loaded["parse_error"]["line"] == 1 and loaded["parse_error"]["column"] > 1
        assert loaded["text"] == broken and loaded["values"] == {}
        # the form's (empty) values never replace the user's text
        refused = client.put("/api/config", json={"values": {}})
        assert refused.status_code == 409 and "not valid JSON" in refused.json()["error"]["text"]
        assert path.read_text() == broken

        # the text editor: still broken text is refused at its line and column; fixed text is saved as typed
        still = client.put("/api/config/text", json={"text": '{\n  "lora_rank": 4,\n}'})
        assert still.status_code == 422 and (still.json()["error"]["line"], still.json()["error"]["column"]) == (3, 1)
        assert path.read_text() == broken
        fixed = good.replace('"lora_rank": 4', '"lora_rank": 6')
        saved = client.put("/api/config/text", json={"text": fixed}).json()
        assert saved["saved"] and path.read_text() == fixed
        kept = project / saved["kept"]
        assert kept.read_text() == broken and kept.parent == project / ".k5tune" / "backups" / "config" / "config.json"

        # a form save keeps the version it replaces too
        values = {**client.get("/api/config").json()["values"], "lora_rank": 8}
        again = client.put("/api/config", json={"values": values}).json()
        assert (project / again["kept"]).read_text() == fixed and json.loads(path.read_text())["lora_rank"] == 8
        assert len(list(kept.parent.iterdir())) == 2
        # the dataset file too
        datasets = project / "config" / "multidatabackend.json"
        before = datasets.read_text()
        backends = client.get("/api/datasets").json()["backends"]
        backends[0]["repeats"] = 2
        kept = client.put("/api/datasets", json={"backends": backends}).json()["kept"]
        assert (project / kept).read_text() == before and json.loads(datasets.read_text())[0]["repeats"] == 2


def test_security_headers_tokens_and_download_names(project, capsys):
    from k5tune.cli import main
    from k5tune.errors import K5TuneError

    lora = project / "output" / "pytorch_lora_weights.safetensors"
    lora.parent.mkdir(parents=True)
    lora.write_bytes(b"weights")
    with serve(project) as client:
        for url in ["/", "/static/app.js", "/api/info", "/api/runs/999"]:
            headers = client.get(url).headers
            assert "default-src 'self'" in headers["content-security-policy"], url
            assert "frame-ancestors 'none'" in headers["content-security-policy"], url
            assert headers["x-frame-options"] == "DENY", url
        download = client.get("/api/files", params={"path": "output/pytorch_lora_weights.safetensors", "download": 1})
        assert download.content == b"weights"
        assert download.headers["content-disposition"] == 'attachment; filename="pytorch_lora_weights.safetensors"'
        inline = client.get("/api/files", params={"path": "output/pytorch_lora_weights.safetensors"})
        assert inline.headers["content-disposition"].startswith("inline")

    # an empty token would lock everyone out: refused, at the command line too; a short one is warned about
    with pytest.raises(K5TuneError, match="empty"):
        server_token("0.0.0.0", "")
    with pytest.raises(ValueError):
        create_app(project, token=" ")
    assert main(["server", "--token", "", "--project-dir", str(project)]) == 2
    assert "--token is empty" in capsys.readouterr().err
    assert server_token("0.0.0.0", "short") == "short"
    assert "only 5 characters" in capsys.readouterr().err
    assert server_token("0.0.0.0", "x" * 24) == "x" * 24 and capsys.readouterr().err == ""


# --- one path policy (#22) ---------------------------------------------------------------------------------


def test_symlinks_out_of_the_project_are_never_listed_or_read(project, tmp_path):
    outside = tmp_path / "outside"
    (outside / "ckpt").mkdir(parents=True)
    (outside / "ckpt" / "secret-weights.bin").write_bytes(b"x" * 1000)
    write_clip(outside / "step" / "secret.mp4", frames=9)
    (outside / "caption.txt").write_text("the outside file's text\n")
    output = project / "output"
    (output / "validation").mkdir(parents=True)
    os.symlink(outside / "ckpt", output / "checkpoint-5")
    os.symlink(outside / "step", output / "validation" / "step-000003")
    (output / "checkpoint-7").mkdir()
    (output / "checkpoint-7" / "ours.bin").write_bytes(b"ok")
    os.symlink(outside / "ckpt" / "secret-weights.bin", output / "checkpoint-7" / "linked.bin")
    with serve(project) as client:
        listed = client.get("/api/outputs", params={"dir": "output"}).json()
        assert [c["name"] for c in listed["checkpoints"]] == ["checkpoint-7"]
        assert listed["checkpoints"][0]["files"] == ["ours.bin"] and listed["checkpoints"][0]["size_bytes"] == 2
        assert listed["videos"] == [] and "secret" not in json.dumps(listed)

        # a caption linked from outside: the preview refuses, naming the link, and shows nothing of it
        caption = project / "datasets" / "videos" / "clip_000.txt"
        caption.unlink()
        os.symlink(outside / "caption.txt", caption)
        preview = client.post("/api/datasets/preview", json={})
        assert preview.status_code == 403 and "outside file" not in preview.text
        assert "datasets/videos/clip_000.txt is a link" in preview.json()["detail"]
        assert preview.json()["error"]["key"] == "instance_data_dir"
        # and a run is not started on it either
        assert client.post("/api/runs", json={}).status_code == 403
        assert client.get("/api/runs").json() == []


def test_one_path_policy_at_save_and_at_start_for_every_path_key(project, tmp_path):
    outside = str(tmp_path / "elsewhere")
    allowed = tmp_path / "allowed"
    config = project / "config" / "config.json"
    with serve(project) as client:
        values = client.get("/api/config").json()["values"]
        for key, value in [("logging_dir", outside), ("logging_dir", "../../x"), ("validation_prompt_library", outside),
                           ("output_dir", outside), ("data_backend_config", "../d.json"),
                           ("resume_from_checkpoint", outside), ("pretrained_model_name_or_path", outside)]:
            before = config.read_text()
            refused = client.put("/api/config", json={"values": {**values, key: value}})
            assert refused.status_code == 422, key
            error = refused.json()["error"]
            assert error["field"] == key and key in error["message"] and "outside" in error["message"], key
            assert config.read_text() == before
            text = client.put("/api/config/text", json={"text": json.dumps({**values, key: value})})
            assert text.status_code == 422 and text.json()["error"]["field"] == key
        assert client.put("/api/config", json={"values": {**values, "resume_from_checkpoint": "latest"}}).status_code == 200

        backends = client.get("/api/datasets").json()["backends"]
        for index, key in [(0, "cache_dir_vae"), (0, "instance_data_dir"), (1, "cache_dir")]:
            changed = json.loads(json.dumps(backends))
            changed[index][key] = outside
            refused = client.put("/api/datasets", json={"backends": changed})
            assert refused.status_code == 422, key
            assert (refused.json()["error"]["backend"], refused.json()["error"]["key"]) == (index, key)

        # Start reads the files as they are on disk: the same policy, so a hand-edited file is refused too
        for key in ("logging_dir", "validation_prompt_library"):
            write_config(project, **{key: outside})
            started = client.post("/api/runs", json={})
            assert started.status_code == 403 and started.json()["error"]["key"] == key
            write_config(project, **{key: None})
        datasets = project / "config" / "multidatabackend.json"
        original = datasets.read_text()
        for index, key in [(0, "instance_data_dir"), (0, "cache_dir_vae"), (1, "cache_dir")]:
            changed = json.loads(original)
            changed[index][key] = outside
            datasets.write_text(json.dumps(changed))
            started = client.post("/api/runs", json={})
            assert started.status_code == 403 and started.json()["error"]["key"] == key
        assert client.get("/api/runs").json() == []

    # a root the person running the server allowed on its command line
    model = json.loads(config.read_text())["pretrained_model_name_or_path"]
    with serve(project, allowed_roots=[model, allowed]) as client:
        changed[1]["cache_dir"] = str(allowed / "text")
        assert client.put("/api/datasets", json={"backends": changed}).status_code == 200
        assert client.put("/api/config", json={"values": {**values, "logging_dir": str(allowed / "logs")}}).status_code == 200


def test_absurd_sizes_are_refused_with_the_valid_range_by_cli_and_ui(project, capsys, monkeypatch):
    from k5tune.cli import main

    monkeypatch.chdir(project)
    assert main(["train", "--dry-run", "--lora_rank", "100000"]) == 2
    assert "lora_rank" in (err := capsys.readouterr().err) and "valid range: 1 to 1024" in err
    assert main(["train", "--dry-run", "--max_train_steps", "100000000"]) == 2
    assert "valid range: 1 to 10000000" in capsys.readouterr().err
    assert main(["train", "--dry-run", "--validation_resolution", "512x100000"]) == 2
    assert "16 to 4096" in capsys.readouterr().err
    with serve(project) as client:
        fields = {f["name"]: f for f in client.get("/api/schema").json()["config"]}
        assert (fields["lora_rank"]["gt"], fields["lora_rank"]["le"]) == (0, 1024)
        values = client.get("/api/config").json()["values"]
        refused = client.put("/api/config", json={"values": {**values, "lora_rank": 100000}, "validate_only": True})
        assert refused.status_code == 422 and refused.json()["error"]["field"] == "lora_rank"
        assert "valid range: 1 to 1024" in refused.json()["error"]["message"]
        backends = client.get("/api/datasets").json()["backends"]
        for key, value, shown in [("resolution", 100000, "valid range: 1 to 4096"),
                                  ("video", {"num_frames": 100001}, "valid range: 1 to 1021")]:
            changed = json.loads(json.dumps(backends))
            changed[0][key] = value
            refused = client.put("/api/datasets", json={"backends": changed, "validate_only": True})
            assert refused.status_code == 422 and shown in refused.json()["error"]["message"], key


def test_system_panel_shows_each_gpu_or_none_and_the_queue(project, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi
    with serve(project) as client:
        data = client.get("/api/system").json()
        assert data["gpus"] == [] and data["note"].startswith("no GPU") and data["queue"] == []
    fake_nvidia_smi(tmp_path / "bin", monkeypatch)
    with serve(project) as client:
        first = client.post("/api/runs", json={}).json()
        second = client.post("/api/runs", json={}).json()
        data = client.get("/api/system").json()
        assert data["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_used_mib": 40960.0,
                                 "memory_total_mib": 81920.0, "utilization_percent": 73.0}]
        assert [(r["id"], r["status"]) for r in data["queue"]] == [(first["id"], "running"), (second["id"], "queued")]
        client.post(f"/api/runs/{second['id']}/stop")
        client.post(f"/api/runs/{first['id']}/stop", json={"force": True})
        wait_finished(client, first["id"])
        assert client.get("/api/system").json()["queue"] == []


def test_a_failed_run_never_shows_another_runs_metrics(project):
    output = project / "output"
    output.mkdir()
    (output / "metrics.csv").write_text("step,epoch,loss,lr,step_seconds\n1,0,0.5,0.001,0.1\n2,0,0.4,0.001,0.1\n")
    write_config(project, lora_rank=0)
    with serve(project) as client:
        run_id = client.post("/api/runs", json={}).json()["id"]
        events = read_events(client, run_id, lambda e, d: e == "end")
    assert events[-1][1]["status"] == "failed"
    assert "metrics" not in {e for e, _ in events}, "the earlier run's metrics.csv is not this run's"


@pytest.mark.slow
def test_runs_list_their_dataset_and_steps_and_resume_from_a_chosen_checkpoint(tmp_path, tiny_model_dir):
    project = make_project(tmp_path / "p", tiny_model_dir, {"max_train_steps": 4, "checkpointing_steps": 2,
                                                           "train_batch_size": 2})
    with serve(project) as client:
        first = wait_finished(client, client.post("/api/runs", json={}).json()["id"])
        assert first["status"] == "completed"
        listed = client.get("/api/runs").json()[0]
        assert (listed["steps_done"], listed["total_steps"]) == (4, 4)
        assert listed["datasets"] == ["clips (datasets/videos)"] and listed["dataset_file"] == "config/multidatabackend.json"
        assert [c["name"] for c in client.get("/api/outputs").json()["checkpoints"]] == ["checkpoint-2", "checkpoint-4"]

        assert client.post("/api/runs", json={"resume_from": "../elsewhere"}).status_code == 403
        assert client.post("/api/runs", json={"resume_from": "output/checkpoint-9"}).status_code == 404
        resumed = client.post("/api/runs", json={"resume_from": "output/checkpoint-2"}).json()
        assert resumed["resume"] and resumed["config_snapshot"]["resume_from"] == "output/checkpoint-2"
        assert wait_finished(client, resumed["id"])["status"] == "completed"
        log = client.get(f"/api/runs/{resumed['id']}/log").text
        assert "--resume_from_checkpoint" in log and "checkpoint-2" in log and "resumed from" in log
        listed = client.get("/api/runs").json()[0]
        assert (listed["id"], listed["steps_done"], listed["resume_from"]) == (resumed["id"], 4, "output/checkpoint-2")


def test_presets_are_the_wizards_for_the_flavour_and_card(project):
    from k5tune.estimate import presets as configure  # the wizard's presets and recommender

    presets_route = sys.modules["k5tune.server.routes.presets"]
    big_machine = patch.object(presets_route, "host_memory", lambda: HostMemory(125.0, 100.0))
    with serve(project) as client, big_machine:
        lite = client.get("/api/presets", params={"gpu_gib": 16}).json()
        assert lite["recommended"] == configure.choose_preset("t2v-lite-sft-5s", 16).recommended == "16gb"
        assert [p["name"] for p in lite["presets"]] == [p.name for p in configure.LITE_PRESETS
                                                       if configure.preset_available(p)]
        assert lite["keys"] == list(configure.PRESET_KEYS) and lite["flavour"] == "t2v-lite-sft-5s"
        write_config(project, model_flavour="t2v-pro-sft-5s-hd")
        pro = client.get("/api/presets", params={"gpu_gib": 80}).json()
        assert pro["recommended"] == configure.choose_preset("t2v-pro-sft-5s-hd", 80, 1).recommended == "pro-80gb"
        assert "pro-group-offload" in [p["name"] for p in pro["presets"]]
        # 10 s clips under NABLA: the recommendation follows the dataset file's shape, not 512x768x61's classes
        write_config(project, model_flavour="t2v-lite-sft-10s")
        datasets = project / "config" / "multidatabackend.json"
        backends = json.loads(datasets.read_text())
        backends[0].update(resolution=512, video={"num_frames": 241})
        datasets.write_text(json.dumps(backends))
        ten = client.get("/api/presets", params={"gpu_gib": 47.5}).json()
        assert ten["shape"] == ten["fits_shape"] == "512x768x241"
        by_name = {p["name"]: p for p in ten["presets"]}
        assert by_name["40-48gb"]["predicted_gib"] > 47.5 > by_name["16gb"]["predicted_gib"]
        assert ten["recommended"] == "16gb" != configure.choose_preset("t2v-lite-sft-10s", 47.5).recommended
        # activation offload pins ~38 GiB of CPU memory at 241 frames: not on a machine of 32 GB
        assert by_name["16gb"]["pinned_gib"] > 30 and by_name["40-48gb"]["pinned_gib"] == 0
        assert not any(p["held_back"] for p in ten["presets"])
        with patch.object(presets_route, "host_memory", lambda: HostMemory(31.3, 28.0)):
            small = client.get("/api/presets", params={"gpu_gib": 47.5}).json()
        assert small["pinnable_gib"] < 30 and small["recommended"] == "up-to-12gb"
        assert [p["name"] for p in small["presets"] if p["held_back"]] == ["16gb"]
        # a dataset file outside the project is not read: the presets' measured shape stands
        write_config(project, data_backend_config=str(project.parent / "elsewhere.json"))
        outside = client.get("/api/presets", params={"gpu_gib": 47.5})
        assert outside.status_code == 200 and outside.json()["shape"] is None
        assert outside.json()["recommended"] == "40-48gb"
