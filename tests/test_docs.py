"""What the READMEs and the shipped model cards say agrees with the repository: the figures the READMEs quote are
the cards', every path they name exists, and no card holds a path that exists only on one machine."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess

import pytest
from ros_harness import REPO
from test_package import console_scripts

from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import models_dir
from seg_node.ros import node_parameters as params
from seg_node.toolchain.data import CAMVID_CLASSES

DOCS = ("README.md", "models/README.md")
CARDS = {path.stem: ModelCard.load(path) for path in sorted(models_dir().glob("*.json"))}
#: top-level folders of the repository whose paths a README may name
REPO_FOLDERS = ("models", "docs", "config", "launch", "results", "seg_node", "tests", "scripts", "data")
#: options after which a command names what it writes, not what it reads
OUTPUT_OPTIONS = {"--out", "--work-dir", "--json", "-o", "--output"}
#: commands, as the first word of a code span or code line: their arguments are read as a command's
COMMANDS = re.compile(r"^(seg[-_]\w|ros2\b|python\b|colcon\b|pip\b|torchrun\b|camera_publisher\b|source\b)")


def doc_text(name: str) -> str:
    return (REPO / name).read_text()


#: in document order: a fenced code block (also indented, in a list), a code span, a link target
PIECES = re.compile(r"^ *```[^\n]*\n(?P<block>.*?)^ *```|(?<!`)`(?P<span>[^`]+)`(?!`)|\]\((?P<link>[^)\s]+)\)",
                    re.S | re.M)


def is_placeholder(path: str) -> bool:
    """`models/<name>.json`, `results/kd/*.json`, `$CAMVID_ROOT/...`, `runs/x`: a pattern, not a file."""
    return bool(re.search(r"[<>*{}$…]|\.\.\.", path)) or any(
        len(part.split(".")[0]) == 1 for part in path.split("/") if part)


def repo_path(word: str) -> str | None:
    """The repository path a word names (`models/x.json`, `./models/x.json`, `--model=models/x.json`), or None."""
    word = word.split("=", 1)[-1].strip("'\"`,;:()").removeprefix("./").split("#")[0].split("::")[0].rstrip(".")
    if word.split("/")[0] in REPO_FOLDERS and "/" in word and not is_placeholder(word):
        return word.rstrip("/")
    return None


def named_paths(text: str) -> tuple[set[str], set[str]]:
    """(paths the document says exist, paths its commands write). Cited files and links must exist; so must a
    command's inputs, unless something earlier in the document writes them (its --out, a file in that folder or
    with that stem): a reader who runs the commands in order has them. What follows --out is an output."""
    named, written = set(), set()

    def read(words: list[str], command: bool) -> None:
        for before, word in zip([""] + words, words):
            path = repo_path(word)
            if path is None:
                continue
            if before in OUTPUT_OPTIONS or word.split("=")[0] in OUTPUT_OPTIONS:
                written.add(path)
            elif not command or not any(path == out or path.startswith((out + "/", out + ".")) for out in written):
                named.add(path)

    for piece in PIECES.finditer(text):
        if piece["block"] is not None:
            for line in piece["block"].replace("\\\n", " ").splitlines():  # a trailing \ continues the line
                read(line.split("#")[0].split(), command=True)
        elif piece["span"] is not None:
            read(piece["span"].split(), command=bool(COMMANDS.match(piece["span"].strip())))
        elif "://" not in piece["link"]:
            read([piece["link"]], command=False)
    return named, written


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_readme_names_exists_in_the_repository(doc):
    """Strict for what a reader is pointed at (links, cited files, a command's inputs), free for what the
    document's own commands write and for patterns such as `models/<name>.json`."""
    named, _ = named_paths(doc_text(doc))
    missing = sorted(path for path in named if not (REPO / path).exists())
    assert not missing, f"{doc} names paths the repository does not have: {missing}"
    if (REPO / ".git").exists():  # a file git ignores (results/ today) exists here but not in a clone
        ignored = subprocess.run(["git", "check-ignore", *sorted(named)], cwd=REPO, capture_output=True, text=True)
        assert not ignored.stdout.split(), f"{doc} names files git ignores: {ignored.stdout.split()}"


def test_the_path_rule_tells_cited_files_from_outputs_and_placeholders():
    text = ("Cite `results/eval/metrics.json` and [the plot](docs/plot.png).\n\n  ```bash\n"
            "  seg-prune --model models/base.json --out results/kd/step1  # writes results/kd/step1.json\n"
            "  seg-eval --model results/kd/step1.json --data $CAMVID_ROOT/test --out results/eval \\\n"
            "      --also results/other.json\n  ```\n"
            "`seg-train --data $CAMVID_ROOT --out runs/x` writes `runs/x/best.pt`; see `models/<name>.json`, "
            "`tests/test_docs.py::test_x` and (`--out results/kd/ce`) `seg-eval --model results/kd/ce.json`.\n")
    named, written = named_paths(text)
    assert named == {"results/eval/metrics.json", "docs/plot.png", "models/base.json", "results/other.json",
                     "tests/test_docs.py"}
    assert written == {"results/kd/step1", "results/eval", "results/kd/ce"}


def strings_in(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)
    elif isinstance(node, str):
        yield node


def machine_paths(text: str) -> list[str]:
    """Absolute paths, home-relative paths and paths that climb out of the repository, in a card's string."""
    words = re.split(r"[\s=\"'(),;]+", text)
    return [w for w in words if re.match(r"(/|~/|\.\./)[\w.-]", w) or re.match(r"[A-Za-z]:\\", w)]


@pytest.mark.parametrize("name", sorted(CARDS))
def test_no_shipped_card_holds_a_path_of_one_machine(name):
    """Cards name their data set by name and checksum (`data` records, `--data $CAMVID_ROOT` in commands)."""
    card = json.loads((models_dir() / f"{name}.json").read_text())
    found = sorted({path for text in strings_in(card) for path in machine_paths(text)})
    assert not found, f"models/{name}.json: {found}"
    test = card["metrics"]["camvid_test"]["data"]
    assert test["name"] == "CamVid (11-class SegNet split)" and test["frames"] == 233 and len(test["sha256"]) == 64


def test_every_shipped_model_file_is_named_by_a_card_and_none_is_a_copy_of_another():
    """A model file is committed only when it ships, once: a card that runs another model's network differently
    (camvid_mobile_unet_flip) names that model's files."""
    named = {name for card in CARDS.values() for name in card.files.values()}
    files = {path.name for path in models_dir().iterdir() if path.suffix in (".onnx", ".safetensors")}
    assert named == files, (sorted(named - files), sorted(files - named))
    digests = [hashlib.sha256((models_dir() / name).read_bytes()).hexdigest() for name in sorted(files)]
    assert len(set(digests)) == len(digests)


def test_the_machine_path_rule_flags_absolute_and_climbing_paths_only():
    text = "seg-eval --data /work/shared/camvid --teacher=../shared/m.json --out results/x (x - 127) / 128 ~/data"
    assert machine_paths(text) == ["/work/shared/camvid", "../shared/m.json", "~/data"]


def table_rows(text: str) -> list[dict[str, str]]:
    """Markdown table rows as {header: cell}, markup (`, *) stripped."""
    rows, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [re.sub(r"[`*]", "", c).strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-: "):
            rows.append(dict(zip(header, cells)))
    return rows


def first_number(cell: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?", cell).group())


@pytest.mark.parametrize("doc", DOCS)
def test_the_model_tables_quote_each_cards_test_figures(doc):
    """Every table row that names a shipped model quotes its card's test mIoU (2 decimals) and per-class IoU
    (1 decimal); README.md's table lists every shipped model."""
    quoted = set()
    for row in table_rows(doc_text(doc)):
        name = next(iter(row.values()))
        if name not in CARDS:
            continue
        test = CARDS[name].metrics["camvid_test"]
        for header, cell in row.items():
            if "mIoU" in header and "test" in header:
                assert f"{first_number(cell):.2f}" == f"{test['miou']:.2f}", (doc, name, cell)
                quoted.add(name)
            elif header in CAMVID_CLASSES:
                assert abs(first_number(cell) - test["per_class_iou"][header]) <= 0.05 + 1e-9, (doc, name, header)
    if doc == "README.md":
        assert quoted == set(CARDS), f"README.md's models table lacks {sorted(set(CARDS) - quoted)}"


def test_the_readmes_state_the_pruning_and_flip_figures_of_the_cards():
    """The differences the READMEs quote, from the cards: what pruning and INT8 cost on test (INT8 within its
    1.0 target), and the held-out gain by which the flip-averaged model cleared the half-point rule."""
    miou = {name: card.metrics["camvid_test"]["miou"] for name, card in CARDS.items()}
    pruning = miou["camvid_mobile_unet"] - miou["camvid_mobile_unet_pruned"]
    int8 = miou["camvid_mobile_unet_pruned"] - miou["camvid_mobile_unet_pruned_int8"]
    held_out = {name: CARDS[name].class_bias["held_out"]["miou_after"]
                for name in ("camvid_mobile_unet", "camvid_mobile_unet_flip")}
    flip_gain = held_out["camvid_mobile_unet_flip"] - held_out["camvid_mobile_unet"]
    assert int8 <= 1.0 and flip_gain >= CARDS["camvid_mobile_unet_flip"].class_bias["held_out"]["min_gain"]
    for doc in DOCS:
        text = doc_text(doc)
        for figure in (pruning, int8):
            assert f"{figure:.2f}" in text, (doc, f"{figure:.2f}")
    assert f"+{flip_gain:.2f}" in doc_text("models/README.md")


def test_readme_documents_every_parameter_and_console_script():
    readme = doc_text("README.md")
    for name in params.PARAMETERS:
        assert f"`{name}`" in readme, name
    for script in console_scripts():
        assert script in readme, script
