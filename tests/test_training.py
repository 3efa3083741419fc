"""The trainers' shared skeleton (training.py) where a GPU cluster would break it: RNG states of more devices
than present, a crash between two checkpoints, memory-mapped resume, the progress line's means on the device."""
import os

import torch

import training
import checkpoints


def test_a_resume_sees_fewer_devices_than_the_checkpoint_was_written_with(monkeypatch):
    """Older checkpoints hold one CUDA RNG state per visible device (8); resuming where one device is visible sets
    this device's state from the first, and indexes no other device. New checkpoints hold this device's only."""
    states = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": calls.append(state))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda _: (_ for _ in ()).throw(AssertionError("all devices")))
    training.set_rng_state({"cpu": torch.get_rng_state(), "cuda": states})
    assert len(calls) == 1 and torch.equal(calls[0], states[0])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[3])
    saved = training.rng_state()
    assert torch.equal(saved["cuda"], states[3])  # one state, not a list of every visible device's
    training.set_rng_state(saved)
    assert torch.equal(calls[1], states[3])


def test_the_previous_checkpoint_is_kept_and_resumed_from_after_a_crash_between_renames(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    model = torch.nn.Linear(2, 2)
    for it in (1, 2):
        training.save(path, model, {"num_latent_tokens": 8}, {}, it, optimizer={})
    assert torch.load(path, weights_only=True)["iter_num"] == 2
    assert torch.load(tmp_path / "ckpt-prev.pt", weights_only=True)["iter_num"] == 1
    os.remove(path)  # a crash after the latest was moved aside and before the new one took its name
    checkpoint = training.resume("resume", str(tmp_path), "tokenizer")
    assert checkpoint["iter_num"] == 1 and set(checkpoint["resume"]) == {"optimizer", "rng"}


def test_older_checkpoints_keep_resume_state_at_the_top_level(tmp_path):
    torch.save({"model": {}, "model_args": {"num_tokens": 8}, "iter_num": 3, "optimizer": {"x": 1}, "rng": {}},
               tmp_path / "ckpt.pt")
    assert training.resume("resume", str(tmp_path), "generator")["resume"] == {"optimizer": {"x": 1}, "rng": {}}


def test_checkpoints_are_read_memory_mapped(tmp_path, monkeypatch):
    torch.save({"model": {"w": torch.ones(3)}}, tmp_path / "ckpt.pt")
    seen = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: seen.append(kw) or load(*a, **kw))
    assert torch.equal(checkpoints.read_checkpoint(tmp_path / "ckpt.pt")["model"]["w"], torch.ones(3))
    assert seen == [dict(map_location="cpu", weights_only=True, mmap=True)]


def test_logged_means_stay_on_the_device():
    mean = training.global_mean({"loss": torch.tensor(3.0), "accuracy": torch.tensor(1.0)}, 2)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in mean.values())
    assert f"{mean['loss']:.2f}" == "1.50" and f"{mean['accuracy']:.0%}" == "50%"


def tf32_readers():
    """Whether TF32 is on, as each reader of the setting sees it: the allow_tf32 flags, get_float32_matmul_precision,
    and the per-backend fp32_precision where torch has it (torch.compile reads some of each)."""
    b = torch.backends
    seen = [b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, torch.get_float32_matmul_precision() != "highest"]
    if hasattr(b.cudnn, "conv"):
        seen += [b.cuda.matmul.fp32_precision == "tf32", b.cudnn.conv.fp32_precision == "tf32"]
    return seen


def test_tf32_on_in_setup_off_in_fid_features_and_back_every_reader_agreeing():
    """training.setup turns TF32 on, fid.features off within and back on after, through one API: every reader agrees
    and none raises ("mix of the legacy and new APIs"), before, within and after."""
    import fid
    restore = training.set_tf32(False)  # whatever the suite had, put back at the end
    try:
        training.setup("cpu", "float32", 0)
        assert all(tf32_readers())
        within = []
        model = torch.nn.Conv2d(3, 1, 1)
        model.register_forward_hook(lambda *_: within.append(tf32_readers()))
        fid.features(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
        assert within == [[False] * len(tf32_readers())]
        assert all(tf32_readers())
    finally:
        restore()


def test_set_tf32_restores_each_backend_and_mends_a_write_through_fp32_precision():
    """torch's defaults differ per backend (cuDNN on, cuBLAS off): restored each as it was. A caller that wrote
    fp32_precision alone leaves allow_tf32 behind (reading it raises); set_tf32 and its restore leave every reader
    agreeing with what that caller asked for."""
    restore = training.set_tf32(False)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
        training.set_tf32(True)()
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
        if hasattr(torch.backends.cudnn, "conv"):
            torch.backends.cuda.matmul.fp32_precision = "tf32"
            training.set_tf32(False)()
            assert all(tf32_readers())
    finally:
        restore()


def test_the_progress_line_on_cuda_shows_the_peak_memory_and_first_the_seconds_compilation_took(monkeypatch):
    progress = training.Progress(0, 20, 64, "img")
    assert "memory" not in progress.line(5, 5, ["loss 1.0"])  # a CPU run's line as it was
    progress = training.Progress(10, 20, 64, "img")  # resumed at 10
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 3 * 2 ** 30)
    first, second = progress.line(15, 5, ["loss 1.0"]), progress.line(20, 5, ["loss 0.9"])
    assert first.startswith("iter 15/20 | loss 1.0 | ") and " img/s | eta " in first
    assert first.endswith(" | peak memory 3.0 GiB | first 5 iters 0.0 s")
    assert second.endswith(" | peak memory 3.0 GiB")
