"""The README's and docs/api.md's Python code runs as written (on the CPU here), the Quickstart learns,
and the links between the documents lead somewhere."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"
API = DOCS / "api.md"


def python_blocks(page: Path = README) -> dict[str, list[str]]:
    """``{section heading: [python code block, ...]}`` of a markdown page."""
    blocks, heading = {}, ""
    for match in re.finditer(r"^(#+ [^\n]+)$|^```python\n(.*?)^```$", page.read_text(), re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.setdefault(heading, []).append(match.group(2))
    return blocks


def test_the_pages_have_the_blocks_this_file_runs():
    readme = python_blocks()
    assert "Quickstart" in readme and len(readme["Quickstart"]) == 1
    assert len(readme["Moving from SpikingJelly"]) == 2
    api = python_blocks(API)
    for heading in ("Neurons", "The whole training step as one CUDA graph", "torch.compile", "Model zoo",
                    "The activation_based face"):
        assert len(api.get(heading, [])) == 1, heading


@pytest.mark.parametrize("page", [README, API], ids=["README", "api"])
def test_every_python_block_but_the_quickstart_runs(page, capsys):
    for heading, codes in python_blocks(page).items():
        if heading != "Quickstart":
            for code in codes:
                exec(compile(code, f"{page.name} ({heading})", "exec"), {"__name__": "docs"})


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_documents_leads_somewhere():
    pages = [README, *sorted(DOCS.glob("*.md"))]
    assert API in pages and len(pages) >= 6
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target}"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert anchor in {_anchor(h) for h in headings}, f"{page.name}: {target}"


def test_the_quickstart_runs_and_learns(capsys):
    (code,) = python_blocks()["Quickstart"]
    namespace = {"__name__": "readme"}
    exec(compile(code, "README.md (Quickstart)", "exec"), namespace)
    printed = re.findall(r"^step (\d+): loss ([\d.]+), accuracy ([\d.]+)$", capsys.readouterr().out, re.M)
    assert [int(step) for step, _, _ in printed] == [0, 20, 40, 60]
    losses = [float(loss) for _, loss, _ in printed]
    accuracies = [float(acc) for _, _, acc in printed]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.6 * losses[0], losses
    assert accuracies[-1] > 0.6 > accuracies[0], accuracies
    # every parameter received a gradient (the last step's)
    for name, parameter in namespace["net"].named_parameters():
        assert parameter.grad is not None and bool(parameter.grad.abs().sum() > 0), name
    assert namespace["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_folder_the_readme_names_is_the_one_its_command_writes():
    from flashspike.examples import conv_fashion_mnist as cli

    text = README.read_text()
    command = re.search(r"python -m flashspike\.examples\.conv_fashion_mnist (-device cpu [^\n`]*)", text).group(1)
    folder = cli.run_name(cli.parse_args(command.split()))
    assert f"`logs/{folder}`" in text and f"-resume logs/{folder}/checkpoint_latest.pth" in text


def test_the_first_conv_snn_page_runs_and_learns(capsys):
    """docs/first_conv_snn.md: its one program runs as written, starts silent and learns the toy task."""
    page = DOCS / "first_conv_snn.md"
    (code,) = re.findall(r"^```python\n(.*?)^```$", page.read_text(), re.M | re.S)
    exec(compile(code, str(page), "exec"), {"__name__": "docs"})
    out = capsys.readouterr().out
    printed = re.findall(r"^step (\d+): loss ([\d.]+), accuracy ([\d.]+), silent outputs ([\d.]+)$", out, re.M)
    assert [int(step) for step, *_ in printed] == [0, 20, 40]
    (_, first_loss, _, first_silent), *_, (_, last_loss, last_accuracy, last_silent) = printed
    assert float(last_loss) < float(first_loss) and float(last_accuracy) >= 0.75 and float(last_silent) == 0
    assert re.search(r"^firing rate per layer: \{'2': [\d.]+, '4': [\d.]+\}$", out, re.M)
    assert re.search(r"^\d+ ms per step on (cpu|cuda)$", out, re.M)
