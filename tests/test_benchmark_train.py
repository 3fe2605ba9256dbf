"""The training benchmark as a user runs it, on the CPU at a tiny size: rows, JSON, table, peers."""

import json

import pytest
import torch

from flashspike.benchmarks import train as bench
from flashspike.benchmarks import train_worker
from conftest import kernel_device, spikingjelly2_path

TINY = ["--b", "2", "--t", "2", "--warmup", "1", "--steps", "1", "--repeats", "1", "--backend", "torch",
        "--device", "cpu"]


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        bench.parse_args(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--models", "--input", "--t", "--b", "--modes", "--dtype", "--backend", "--memory-format",
                 "--layout-optimization", "--warmup", "--steps", "--repeats", "--epoch-steps", "--peers", "--sj014-path", "--sj2-path",
                 "--out", "--version"):
        assert flag in text


def test_version(capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--version"])
    assert capsys.readouterr().out.startswith("flashspike ")


@pytest.mark.parametrize("argv", [["--b", "0"], ["--t", "4", "0"], ["--modes", "jit"], ["--models", "resnet50"],
                                  ["--input", "mnist"], ["--dtype", "float64"], ["--epoch-steps", "-1"]])
def test_bad_arguments_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as done:
        bench.parse_args(argv)
    assert done.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cpu_run_writes_rows_json_and_table(tmp_path, capsys):
    report = bench.main(["--models", "fmnist", "sew_resnet18", "--modes", "eager", "captured",
                         "--epoch-steps", "1", "--out", str(tmp_path), *TINY])
    saved = json.loads((tmp_path / "train_benchmark.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["torch"] == torch.__version__ and saved["date"] and "cupy" in saved and "triton" in saved
    rows = {(r["model"], r["mode"]): r for r in saved["rows"]}
    assert set(rows) == {(m, mode) for m in ("fmnist", "sew_resnet18") for mode in ("eager", "captured")}
    for model in ("fmnist", "sew_resnet18"):
        eager = rows[model, "eager"]
        assert "error" not in eager, eager
        assert eager["ms"] > 0 and eager["images_per_s"] == pytest.approx(2 / (eager["ms"] * 1e-3))
        assert eager["epoch_s"] > 0 and eager["peak_MiB"] is None and eager["subject"] == "flashspike torch"
        assert eager["steady_peak_MiB"] is None
        assert rows[model, "captured"]["error"] == "needs CUDA"
    assert rows["sew_resnet18", "eager"]["input"] == "cifar"
    out = capsys.readouterr().out
    assert "| sew_resnet18 | cifar | 2 | 2 | eager | channels_last | flashspike torch |" in out
    assert "failed: needs CUDA" in out


def test_compiled_rows_default_to_contiguous_weights_and_flashspike_compile():
    args = bench.parse_args(["--models", "sew_resnet18", "--modes", *bench.MODES])
    formats = {spec["mode"]: spec["memory_format"] for spec in bench.row_specs(args)[0]}
    assert formats == {"eager": "channels_last", "captured": "channels_last", "compile": "contiguous",
                       "reduce-overhead": "contiguous", "max-autotune-no-cudagraphs": "contiguous"}
    assert all(not spec["layout_optimization"] for spec in bench.row_specs(args)[0])
    args = bench.parse_args(["--modes", "compile", "--memory-format", "channels_last", "--layout-optimization"])
    (spec,) = bench.row_specs(args)[0]
    assert spec["memory_format"] == "channels_last" and spec["layout_optimization"]


def test_a_failing_row_is_recorded_not_raised(tmp_path):
    # a backend that cannot run on the CPU fails inside the worker; the run goes on and records why
    report = bench.main(["--models", "fmnist", "--modes", "eager", "--out", str(tmp_path), *TINY[:-4],
                         "--backend", "cupy", "--device", "cpu"])
    (row,) = report["rows"]
    assert "ms" not in row and row["error"] and "| failed: " in bench.format_table([row])


def test_the_table_gives_the_process_peak_and_the_steady_peak_in_their_columns():
    base = dict(model="sew_resnet18", input="imagenet", T=4, B=32, mode="captured", memory_format="channels_last",
                subject="flashspike cupy", ms=8.46, images_per_s=3781.0)
    table = bench.format_table([dict(base, peak_MiB=1305.5, steady_peak_MiB=1102.4),
                                dict(base, mode="eager", peak_MiB=None, steady_peak_MiB=None, kept_MiB=90.2),
                                dict(base, error="needs CUDA")])
    header, rule, gpu_row, cpu_row, failed = table.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[-3:] == ["peak MiB", "steady MiB", "kept MiB"] and rule.count("|") == header.count("|")
    assert [c.strip() for c in gpu_row.strip("|").split("|")][-3:] == ["1306", "1102", "-"]
    assert [c.strip() for c in cpu_row.strip("|").split("|")][-3:] == ["-", "-", "90"]
    assert failed.count("|") == header.count("|")


def test_the_stem_takes_dvs_channels():
    from flashspike.model import sew_resnet
    from flashspike import neuron

    model = sew_resnet.multi_step_sew_resnet18(num_classes=11, multi_step_neuron=neuron.MultiStepIFNode, cnf="ADD")
    train_worker.adapt_stem(model, 2)
    assert model.conv1.in_channels == 2 and model.conv1.out_channels == 64 and model.conv1.stride == (2, 2)
    assert model.eval()(torch.rand(1, 1, 2, 32, 32)).shape == (1, 1, 11)


def test_a_missing_peer_path_is_skipped_with_the_reason(tmp_path):
    args = bench.parse_args(["--peers", "--sj014-path", str(tmp_path / "nowhere"), "--sj2-path", str(tmp_path),
                             "--modes", "eager", *TINY])
    specs, skipped = bench.row_specs(args)
    assert set(skipped) == {"SpikingJelly 0.0.0.0.14", "SpikingJelly 2.x"}
    assert "no spikingjelly package under" in skipped["SpikingJelly 0.0.0.0.14"]
    assert [s["subject"] for s in specs] == ["flashspike"]


def test_spikingjelly_014_peer_runs_in_its_subprocess(tmp_path, peer_stubs):
    spikingjelly = pytest.importorskip("spikingjelly")
    pytest.importorskip("spikingjelly.clock_driven")
    from pathlib import Path

    site = Path(spikingjelly.__path__[0]).parent
    args = bench.parse_args(["--peers", "--sj014-path", str(site), "--sj2-path", str(tmp_path / "none"),
                             "--modes", "eager", "--models", "sew_resnet18", *TINY])
    specs, skipped = bench.row_specs(args)
    assert [s["subject"] for s in specs] == ["flashspike", "sj014"] and "SpikingJelly 2.x" in skipped
    peer = bench.run_spec(specs[1], timeout=300)  # the subprocess with the 0.0.0.0.14 path first
    assert "error" not in peer, peer
    assert peer["subject"] == "SpikingJelly 0.0.0.0.14 torch" and peer["ms"] > 0


TINY_TRANSFORMERS = {  # the benchmark's transformers at a size a CPU trains in a moment
    "spikformer": dict(img_size_h=32, img_size_w=32, patch_size=4, embed_dims=32, num_heads=2, mlp_ratio=2.0,
                       depths=1),
    "spike_driven_transformer": dict(embed_dims=32, num_heads=2, mlp_ratio=2.0, depths=1, pooling_stat="0011"),
}


def test_transformer_rows_build_the_papers_cifar10_configurations():
    from flashspike.model import spike_driven_transformer, spikformer
    from zoo_reference import key_shapes, on_meta

    specs, _ = bench.row_specs(bench.parse_args(["--models", *train_worker.TRANSFORMERS, "--modes", "eager"]))
    configs = {spec["model"]: spec["model_config"] for spec in specs}
    assert key_shapes(on_meta(lambda: spikformer.Spikformer(num_classes=10, **configs["spikformer"]))) == \
        key_shapes(on_meta(spikformer.spikformer_cifar10))
    sdt = on_meta(lambda: spike_driven_transformer.SpikeDrivenTransformer(**configs["spike_driven_transformer"]))
    assert (sdt.head.in_features, len(sdt.blocks), sdt.blocks[0].attn.num_heads) == (512, 2, 8)


@pytest.mark.parametrize("model", train_worker.TRANSFORMERS)
def test_transformer_rows_train_with_adamw(model, monkeypatch):
    made = []
    make_optimizer = train_worker.make_optimizer
    monkeypatch.setattr(train_worker, "make_optimizer", lambda *args: made.append(make_optimizer(*args)) or made[-1])
    (spec,) = bench.row_specs(bench.parse_args(["--models", model, "--modes", "eager", *TINY]))[0]
    row = train_worker.run_row(dict(spec, model_config=TINY_TRANSFORMERS[model]))
    assert row["ms"] > 0 and row["kept_MiB"] > 0 and row["subject"] == "flashspike torch"
    (optimizer,) = made
    assert type(optimizer) is torch.optim.AdamW
    assert sum(p.numel() for p in optimizer.param_groups[0]["params"]) > 2 * 32 * 64  # the whole model
    sgd = train_worker.make_optimizer("sew_resnet18", [torch.zeros(1, requires_grad=True)], False)
    assert type(sgd) is torch.optim.SGD
    # on CUDA: what a captured step needs (AdamW's step() refuses a capture unless capturable)
    on_cuda = train_worker.make_optimizer(model, [torch.zeros(1, requires_grad=True)], True)
    assert on_cuda.defaults["fused"] and on_cuda.defaults["capturable"]


def test_the_first_convolution_is_the_stem_also_when_a_parent_holds_a_later_one():
    from flashspike.model import spike_driven_transformer

    model = spike_driven_transformer.SpikeDrivenTransformer(num_classes=3, embed_dims=16, num_heads=2, depths=1,
                                                            pooling_stat="0011")
    train_worker.adapt_stem(model, 2)
    assert model.patch_embed.stages[0][0].in_channels == 2 and model.patch_embed.rpe_conv.in_channels == 16
    assert model(torch.rand(1, 1, 2, 16, 16)).shape == (1, 3)


def test_spikingjelly_014_has_no_transformers_and_says_so():
    args = bench.parse_args(["--peers", "--models", "spikformer", "sew_resnet18", "--modes", "eager", *TINY])
    specs, skipped = bench.row_specs(args)
    assert skipped == {"SpikingJelly 0.0.0.0.14 spikformer": "SpikingJelly 0.0.0.0.14's model zoo has no spikformer"}
    assert [(s["model"], s["subject"]) for s in specs] == [
        ("spikformer", "flashspike"), ("spikformer", "sj2"),
        ("sew_resnet18", "flashspike"), ("sew_resnet18", "sj014"), ("sew_resnet18", "sj2")]


def test_spikingjelly_2_transformer_peers_run_in_their_subprocess(peer_stubs):
    sj2 = spikingjelly2_path()
    args = bench.parse_args(["--peers", "--sj2-path", str(sj2), "--models", *train_worker.TRANSFORMERS,
                             "--modes", "eager", "reduce-overhead", "--dtype", "float32", *TINY])
    specs, _ = bench.row_specs(args)
    peers = [s for s in specs if s["subject"] == "sj2"]
    assert [(s["model"], s["mode"]) for s in peers] == [(m, mode) for m in train_worker.TRANSFORMERS
                                                        for mode in ("eager", "reduce-overhead")]
    for spec in peers:
        # 2.x's own classes, built in the subprocess with 2.x's path first
        row = bench.run_spec(dict(spec, model_config=TINY_TRANSFORMERS[spec["model"]]), timeout=300)
        if spec["mode"] == "reduce-overhead":
            assert row["error"] == "needs CUDA"
        else:
            assert "error" not in row, row
            assert row["subject"].startswith("SpikingJelly 2.") and row["ms"] > 0 and row["kept_MiB"] > 0


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["captured", "reduce-overhead"])
def test_cuda_graph_modes_run_for_sew_resnet18(mode, tmp_path):
    # (compiled rows go through flashspike.compile with contiguous weights by default: see docs/api.md's
    # torch.compile section)
    report = bench.main(["--models", "sew_resnet18", "--modes", mode, "--b", "4", "--t", "2", "--warmup", "6",
                         "--steps", "3", "--repeats", "2", "--out", str(tmp_path)])
    (row,) = report["rows"]
    assert "error" not in row, row
    assert row["ms"] > 0 and 0 < row["steady_peak_MiB"] <= row["peak_MiB"]


@pytest.mark.gpu
def test_a_recorded_row_says_what_was_alive_at_its_peaks_gpu(tmp_path, capsys):
    report = bench.main(["--models", "sew_resnet18", "--modes", "captured", "--b", "4", "--t", "2", "--warmup", "6",
                         "--steps", "3", "--repeats", "1", "--peak-allocations", "5", "--out", str(tmp_path)])
    (row,) = report["rows"]
    assert "error" not in row, row
    record = row["peak_allocations"]
    assert record["complete"] and record["events"] > 0
    # the replayed history finds the allocator's own peaks (its frees counted when requested)
    assert record["process"]["MiB"] == pytest.approx(row["peak_MiB"], rel=0.05)
    assert record["steady"]["MiB"] == pytest.approx(row["steady_peak_MiB"], rel=0.05)
    groups = record["process"]["groups"]
    assert 0 < len(groups) <= 5 and all(mib > 0 and count > 0 for _, mib, count, _ in groups)
    assert [g[1] for g in groups] == sorted((g[1] for g in groups), reverse=True)
    assert any(".py:" in where for where, *_ in groups)  # (a group with Python frames)
    assert "peak from the second step on" in capsys.readouterr().out


def test_cudnn_autotuning_is_on_unless_turned_off(monkeypatch):
    assert all(spec["cudnn_benchmark"] for spec in bench.row_specs(bench.parse_args([]))[0])
    (spec,) = bench.row_specs(bench.parse_args(["--modes", "eager", "--no-cudnn-benchmark"]))[0]
    assert spec["cudnn_benchmark"] is False
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    spec.update(model="fmnist", input="fmnist", T=2, B=2, warmup=1, steps=1, repeats=1, device="cpu",
                backend="torch", memory_format="contiguous")
    train_worker.run_row(spec)  # the row runs with the setting it was given
    assert torch.backends.cudnn.benchmark is False


def test_rounds_interleave_the_rows_and_keep_each_rows_median(monkeypatch, tmp_path):
    order, times = [], iter([5.0, 1.0, 3.0, 9.0, 4.0, 2.0])  # eager, compile, eager, compile, ...

    def fake_run(spec, timeout):
        order.append(spec["mode"])
        return dict(model=spec["model"], input=spec["input"], T=spec["T"], B=spec["B"], mode=spec["mode"],
                    subject="s", ms=next(times), images_per_s=1.0, peak_MiB=None)

    monkeypatch.setattr(bench, "run_spec", fake_run)
    report = bench.main(["--modes", "eager", "compile", "--rounds", "3", "--out", str(tmp_path)])
    assert order == ["eager", "compile"] * 3
    eager, compiled = report["rows"]
    assert (eager["ms"], eager["ms_rounds"]) == (4.0, [5.0, 3.0, 4.0])
    assert (compiled["ms"], compiled["ms_rounds"]) == (2.0, [1.0, 9.0, 2.0])
    assert bench.median_row([{"error": "boom"}, {"error": "again"}]) == {"error": "boom"}


def test_spike_bits_rows_switch_the_layers_of_flashspike_models_only():
    (spec,) = bench.row_specs(bench.parse_args(["--modes", "eager", "--spike-bits", "--models", "fmnist"]))[0]
    assert spec["spike_bits"] is True
    spec.update(T=2, B=2, warmup=1, steps=1, repeats=1, device="cpu", backend="torch", memory_format="contiguous")
    row = train_worker.run_row(spec)
    assert row["spike_bits_layers"] == 4 and row["subject"] == "flashspike torch, spike bits"  # 2 convs, 2 linears
    # no flag: on in captured CUDA rows only (as H recomputed, below)
    assert bench.row_specs(bench.parse_args(["--modes", "eager"]))[0][0]["spike_bits"] is None
    switch = train_worker.MEMORY_SWITCHES["spike_bits"]
    assert switch.switches(None, cuda=True, captured=True) and not switch.switches(None, cuda=True)
    assert switch.switches(True, cuda=False) and not switch.switches(False, cuda=True, captured=True)


def test_recomputed_h_is_on_by_default_in_captured_cuda_rows_only():
    switch = train_worker.MEMORY_SWITCHES["recompute_h"]
    (spec,) = bench.row_specs(bench.parse_args(["--modes", "eager", "--models", "fmnist"]))[0]
    assert spec["recompute_h"] is None  # no flag: the device and the mode decide
    assert switch.switches(None, cuda=True, captured=True)
    assert not switch.switches(None, cuda=True) and not switch.switches(None, cuda=False, captured=True)
    for flag, on in (("--recompute-h", True), ("--no-recompute-h", False)):
        (spec,) = bench.row_specs(bench.parse_args(["--modes", "eager", "--models", "fmnist", flag]))[0]
        assert spec["recompute_h"] is on
        assert all(switch.switches(on, cuda, captured) == on for cuda in (True, False) for captured in (True, False))
    # a default row on the CPU keeps H, and says nothing of it
    spec.update(recompute_h=None, T=2, B=2, warmup=1, steps=1, repeats=1, device="cpu", backend="torch",
                memory_format="contiguous")
    row = train_worker.run_row(spec)
    assert "recompute_h_layers" not in row and row["subject"] == "flashspike torch"


def test_pool_bytes_are_on_unless_turned_off_and_switch_pools_on_cuda_only():
    for flags, on in (([], True), (["--pool-bytes"], True), (["--no-pool-bytes"], False)):
        (spec,) = bench.row_specs(bench.parse_args(["--modes", "eager", "--models", "fmnist", *flags]))[0]
        assert spec["pool_bytes"] is on, flags
    # On the CPU the byte kernels do not run: the row keeps nn.MaxPool2d and does not claim them.
    spec.update(pool_bytes=True, T=2, B=2, warmup=1, steps=1, repeats=1, device="cpu", backend="torch",
                memory_format="contiguous")
    row = train_worker.run_row(spec)
    assert "pool_bytes_layers" not in row and row["subject"] == "flashspike torch"


def test_recompute_h_rows_keep_less_for_the_backward_by_the_neurons_h(monkeypatch):
    # The Fashion-MNIST net through Triton's interpreter on the CPU: its two conv -> BatchNorm -> neuron
    # pairs keep their H ([T, B, 128, 28, 28] and [T, B, 128, 14, 14] float32) no more.
    kept = {}
    for recompute_h in (False, True):
        args = ["--modes", "eager", "--models", "fmnist", "--recompute-h" if recompute_h else "--no-recompute-h"]
        (spec,) = bench.row_specs(bench.parse_args(args))[0]
        assert spec["recompute_h"] is recompute_h
        spec.update(T=2, B=2, warmup=1, steps=1, repeats=1, device=kernel_device("triton"), backend="triton",
                    memory_format="contiguous", dtype="float32", pool_bytes=False)  # (on CUDA it is on by default)
        row = train_worker.run_row(spec)
        kept[recompute_h] = row["kept_MiB"] * 2**20
    assert row["recompute_h_layers"] == 2 and row["subject"] == "flashspike triton, H recomputed"
    assert kept[False] - kept[True] == 2 * 2 * 128 * (28 * 28 + 14 * 14) * 4


def test_recompute_stem_rows_keep_no_output_of_the_first_convolution():
    # The Fashion-MNIST net's stem (1 -> 128 channels at 28 x 28, once for every step) behind a switched
    # BatchNorm: its output, [B, 128, 28, 28] float32, is kept no more; off unless asked for.
    kept = {}
    for recompute_stem in (False, True):
        args = ["--modes", "eager", "--models", "fmnist", "--recompute-h"] + (["--recompute-stem"] * recompute_stem)
        (spec,) = bench.row_specs(bench.parse_args(args))[0]
        assert spec["recompute_stem"] is recompute_stem
        spec.update(T=2, B=2, warmup=1, steps=1, repeats=1, device=kernel_device("triton"), backend="triton",
                    memory_format="contiguous", dtype="float32", pool_bytes=False)
        row = train_worker.run_row(spec)
        kept[recompute_stem] = row["kept_MiB"] * 2**20
    assert row["recompute_stem_layers"] == 1 and row["subject"] == "flashspike triton, H recomputed, stem recomputed"
    assert kept[False] - kept[True] == 2 * 128 * 28 * 28 * 4
    assert not train_worker.MEMORY_SWITCHES["recompute_stem"].switches(None, cuda=True, captured=True)


def test_rows_run_under_torchrun_as_one_ddp_model(tmp_path):
    # Two Gloo processes on the CPU: one row, from the first, whose images/s counts both batches.
    report = bench.main(["--models", "fmnist", "--modes", "eager", "--nproc", "2", "--out", str(tmp_path), *TINY,
                         "--device", "cpu", "--backend", "torch"])
    (row,) = report["rows"]
    assert "error" not in row, row.get("error")
    assert row["processes"] == 2 and row["images_per_s"] == pytest.approx(2 * row["B"] / (row["ms"] * 1e-3))


@pytest.mark.parametrize("name, kind", [
    ("void fs_forward<__half, 1, 0>(const __half*, __half*)", "neuron"), ("flashspike_backward", "neuron"),
    ("flashspike::multi_step_forward", "neuron"), ("_pack_bits", "spike bits"), ("_unpack_bits", "spike bits"),
    ("_max_pool_positions_backward", "max-pool"), ("aten::max_pool2d_with_indices", "max-pool"),
    ("sm90_xmma_fprop_implicit_gemm_f16f16_f16f32_f32_nhwckrsc_nhwc", "convolution"),
    ("aten::convolution_backward", "convolution"), ("aten::native_batch_norm", "batch norm"),
    ("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x64_16x6_tn_align4>", "matmul"), ("aten::addmm", "matmul"),
    ("void at::native::(anonymous namespace)::fused_sgd_kernel", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::direct_copy_kernel_cuda>", "copy and cast"),
    ("Memset (Device)", "copy and cast"), ("aten::sum", "reduction"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "elementwise"),
    ("cudaGraphLaunch", "other"),
])
def test_profile_kinds(name, kind):
    from flashspike.benchmarks import profile

    assert profile.kind_of(name) == kind


def test_profile_summary_adds_up_and_keeps_the_costliest_names():
    from flashspike.benchmarks import profile

    timed = [("aten::convolution", 300.0), ("aten::add", 50.0), ("aten::convolution", 100.0), ("mystery", 50.0)]
    summary = profile.summarize(timed, steps=2)
    assert summary["kinds"] == {"convolution": 0.2, "elementwise": 0.025, "other": 0.025}
    assert list(summary["kinds"]) == ["convolution", "elementwise", "other"]  # by falling time
    assert summary["ms_per_step"] == pytest.approx(0.25)
    assert summary["top"]["convolution"] == [["aten::convolution", 0.2, 1.0]]  # two calls in two steps
    timed += [("aten::convolution_backward", 600.0)]
    assert [top[0] for top in profile.summarize(timed, steps=2, names=1)["top"]["convolution"]] == [
        "aten::convolution_backward"]
    assert len(profile.summarize(timed, steps=2, names=2)["top"]["convolution"]) == 2


def test_a_profiled_row_says_where_its_time_goes(tmp_path, capsys):
    report = bench.main(["--models", "fmnist", "--modes", "eager", "--profile", "2", "--profile-names", "5",
                         "--out", str(tmp_path), *TINY])
    (row,) = report["rows"]
    profile = row["profile"]
    assert profile["what"] == "operator self time (CPU)"
    # up to 5 names a kind, each with its calls per step
    assert 3 < max(map(len, profile["top"].values())) <= 5
    assert all(len(entry) == 3 and entry[2] > 0 for entries in profile["top"].values() for entry in entries)
    assert profile["kinds"]["convolution"] > 0 and profile["kinds"]["optimizer"] > 0
    assert profile["ms_per_step"] == pytest.approx(sum(profile["kinds"].values()))
    out = capsys.readouterr().out
    assert "| kind | ms/step | share | costliest |" in out and "| convolution |" in out and "x);" in out
    # autocast's 16-bit copy of the first linear layer's weight, one of the step's largest copies, by its
    # shape (which copy costs most depends on the host's threads)
    copies = profile["copying_operators"]
    assert copies and all(name.startswith("aten::") and ms > 0 for name, _shapes, ms in copies)
    assert any("[2048, 6272]" in shapes for _name, shapes, _ms in copies), copies
    assert "copying: aten::" in out
    # the host's side: cProfile's wall time per step, and the functions of most own time (autograd's
    # backward call among them on the CPU, where the whole backward pass is its host time; which forward
    # operator follows it depends on the host's load), each with its calls per step
    host = profile["host"]
    assert host["ms_per_step"] > 0 and 0 < len(host["functions"]) <= 8
    names = [name for name, _ms, _calls in host["functions"]]
    assert any("run_backward" in name for name in names), names
    own = [ms for _name, ms, _calls in host["functions"]]
    assert own == sorted(own, reverse=True) and sum(own) <= host["ms_per_step"] * 1.01
    assert all(calls > 0 for _name, _ms, calls in host["functions"])
    assert "host (cProfile):" in out and "host: " in out
    with pytest.raises(SystemExit):
        bench.parse_args(["--profile", "-1"])


def test_host_function_names_say_module_and_line():
    from flashspike.benchmarks import profile

    name = profile._function_name(("/x/lib/python3.11/site-packages/triton/runtime/jit.py", 600, "run"))
    assert name == "triton/runtime/jit.py:600(run)"
    assert profile._function_name(("/w/src/flashspike/memory/pooling.py", 12, "f")) == "flashspike/memory/pooling.py:12(f)"
    assert profile._function_name(("~", 0, "<built-in method torch.conv2d>")) == "<built-in method torch.conv2d>"
    assert profile._function_name(("/elsewhere/deep/tool.py", 3, "g")) == "deep/tool.py:3(g)"


def test_host_profile_reports_another_profiler_instead_of_failing():
    import cProfile
    import sys

    from flashspike.benchmarks import profile

    if sys.version_info < (3, 12):
        pytest.skip("only Python 3.12's cProfile refuses to start beside another profiler")
    holder = cProfile.Profile()
    holder.enable()
    try:
        host = profile.host_functions(lambda: None, torch.device("cpu"), 2)
    finally:
        holder.disable()
    assert host["ms_per_step"] is None and host["error"]


def test_threads_sets_each_rows_cpu_threads(tmp_path):
    report = bench.main(["--models", "fmnist", "--modes", "eager", "--threads", "1", "--out", str(tmp_path), *TINY])
    (row,) = report["rows"]
    assert "error" not in row, row.get("error")
    assert row["threads"] == 1 and report["settings"]["threads"] == 1
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "-1"])
