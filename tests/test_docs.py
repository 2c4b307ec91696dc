"""What the docs and the shipped model cards say agrees with the repository: the figures the docs quote are the
cards', every path they name exists, the README's parameter table and tool list are the node's and setup.py's,
versions agree, no card holds a path that exists only on one machine, and no text narrates how the work was done."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ros_harness import REPO
from test_package import console_scripts

from seg_node.core.model_card import ModelCard
from seg_node.core.model_files import DEFAULT_MODEL_CARD, models_dir
from seg_node.ros import node_parameters as params
from seg_node.toolchain.compression.study_report import headline_table, load_results

DOCS = ("README.md", "models/README.md", "docs/results.md")
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


def link_target(link: str, folder: str) -> str:
    """A link's target from the repository root: a relative link resolves from the document's folder."""
    target = link.split("#")[0]
    return posixpath.normpath(posixpath.join(folder, target)) if target else ""


def named_paths(text: str, folder: str = "") -> tuple[set[str], set[str]]:
    """(paths the document says exist, paths its commands write). Cited files and links must exist; so must a
    command's inputs, unless something earlier in the document writes them (its --out, a file in that folder or
    with that stem): a reader who runs the commands in order has them. What follows --out is an output. Code
    names paths from the repository root; links, from the document's folder."""
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
            read([link_target(piece["link"], folder)], command=False)
    return named, written


@pytest.mark.parametrize("doc", DOCS)
def test_every_path_a_readme_names_exists_in_the_repository(doc):
    """Strict for what a reader is pointed at (links, cited files, a command's inputs), free for what the
    document's own commands write and for patterns such as `models/<name>.json`."""
    named, _ = named_paths(doc_text(doc), posixpath.dirname(doc))
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
    named, _ = named_paths("[up](../models/base.json), [here](plot.png#top), [anchor](#results)", "docs")
    assert named == {"models/base.json", "docs/plot.png"}


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


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Each markdown table as its rows of cells with their markup, the header first, the separator row left out."""
    tables, rows = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            rows = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if rows is None:
            rows = [cells]
            tables.append(rows)
        elif not set("".join(cells)) <= set("-: "):
            rows.append(cells)
    return tables


def plain(cell: str) -> str:
    return re.sub(r"[`*]", "", cell).strip()


def table_rows(text: str) -> list[dict[str, str]]:
    """Markdown table rows as {header: cell}, markup (`, *) stripped."""
    return [dict(zip(map(plain, table[0]), map(plain, row))) for table in markdown_tables(text) for row in table[1:]]


def first_number(cell: str) -> float:
    return float(re.search(r"-?\d+(\.\d+)?", cell).group())


def class_ious(record: dict) -> dict[str, float]:
    """Per-class IoU of a card's seg-eval record: `per_class` {name: {iou, precision, recall, f1}} since 0.2,
    `per_class_iou` {name: iou} in the records of the models shipped before it."""
    if "per_class" in record:
        return {name: scores["iou"] for name, scores in record["per_class"].items()}
    return record["per_class_iou"]


@pytest.mark.parametrize("doc", DOCS)
def test_the_model_tables_quote_each_cards_test_figures(doc):
    """Every table row that names a shipped model quotes its card's test mIoU and pixel accuracy (2 decimals),
    GMACs (2 decimals, for cards that record them) and per-class IoU (1 decimal); README.md's table lists every
    shipped model."""
    quoted = set()
    for row in table_rows(doc_text(doc)):
        name = next(iter(row.values()))
        if name not in CARDS:
            continue
        test, macs = CARDS[name].metrics["camvid_test"], CARDS[name].compression.get("macs")
        for header, cell in row.items():
            if "mIoU" in header and "test" in header:
                assert f"{first_number(cell):.2f}" == f"{test['miou']:.2f}", (doc, name, cell)
                quoted.add(name)
            elif header == "pixel accuracy":
                assert f"{first_number(cell):.2f}" == f"{test['pixel_accuracy']:.2f}", (doc, name, cell)
            elif header == "GMACs" and macs:
                assert f"{first_number(cell):.2f}" == f"{macs / 1e9:.2f}", (doc, name, cell)
            elif header in class_ious(test):
                assert abs(first_number(cell) - class_ious(test)[header]) <= 0.05 + 1e-9, (doc, name, header)
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



def parameter_table(text: str) -> list[tuple[list[str], list[str], str]]:
    """(names, defaults, when settable) of each row of the table headed `parameter | default | set`, read from the
    markup: a row may name several parameters, with one default each or one for all."""
    [table] = [table for table in markdown_tables(text) if [plain(c) for c in table[0][:3]] == [
        "parameter", "default", "set"]]
    return [(re.findall(r"`([^`]+)`", row[0]), re.findall(r"`([^`]*)`", row[1]), plain(row[2])) for row in table[1:]]


def written_value(text: str):
    """A default as the README writes it (`true`, `""`, `["/camera/image_raw"]`, `2`, `100.0`, `onnxruntime`)."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parameter_table_problems(text: str) -> list[str]:
    rows = parameter_table(text)
    named = [name for names, _, _ in rows for name in names]
    declared = set(params.PARAMETERS)
    problems = [f"not in the table: {sorted(declared - set(named))}"] if declared - set(named) else []
    problems += [f"not declared by the node: {sorted(set(named) - declared)}"] if set(named) - declared else []
    problems += [f"named twice: {name}" for name in sorted(set(named)) if named.count(name) > 1]
    for names, defaults, when in rows:
        if len(defaults) not in (1, len(names)):
            problems.append(f"{names}: {len(defaults)} defaults")
            continue
        for name, default in zip(names, defaults * len(names) if len(defaults) == 1 else defaults):
            spec = params.PARAMETERS.get(name)
            value = written_value(default)
            if spec is not None and (value != spec.default or type(value) is not type(spec.default)):
                problems.append(f"{name}: default `{default}`, declared {spec.default!r}")
            if spec is not None and when != ("run time" if spec.dynamic else "start-up"):
                problems.append(f"{name}: set at {when}, declared dynamic={spec.dynamic}")
    return problems


def test_the_readme_parameter_table_is_the_nodes_declared_parameters():
    """Both ways: each parameter seg_node/ros/node_parameters.py declares has one row, each row names a declared
    parameter, with its default (of its type: 100.0, not 100) and whether it can change at run time."""
    assert parameter_table_problems(doc_text("README.md")) == []


def test_the_parameter_table_check_finds_missing_unknown_and_wrong_rows():
    table = "\n".join(f"| `{name}` | `{json.dumps(spec.default)}` | {'run time' if spec.dynamic else 'start-up'} | |"
                      for name, spec in params.PARAMETERS.items() if name not in ("threads", "overlay_alpha"))
    text = ("| parameter | default | set | |\n|---|---|---|---|\n" + table + "\n| `unknown` | `1` | start-up | |\n"
            "| `threads`, `overlay_alpha` | `2.0`, `0.5` | run time | |\n")
    assert parameter_table_problems(text) == [
        "not declared by the node: ['unknown']", "threads: default `2.0`, declared 2",
        "threads: set at run time, declared dynamic=False"]


#: a seg-* tool's name in prose or in a command (not `seg-*`, seg_node or a path)
TOOL_NAME = re.compile(r"(?<![\w/.-])seg-[a-z]+(?:-[a-z]+)*")
#: the user docs, where every tool named must be one setup.py installs (CHANGELOG.md names earlier ones)
USER_DOCS = sorted({"README.md", "models/README.md", *(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))})


def test_the_readme_names_every_console_script_and_the_docs_no_other_tool():
    scripts = console_scripts()
    readme = doc_text("README.md")
    unnamed = [script for script in scripts if not re.search(rf"(?<![\w-]){re.escape(script)}(?![\w-])", readme)]
    assert not unnamed, f"README.md does not name {unnamed}"
    unknown = {doc: sorted(set(TOOL_NAME.findall(doc_text(doc))) - scripts) for doc in USER_DOCS}
    assert not any(unknown.values()), f"tools setup.py does not install: {unknown}"


def test_the_tool_name_rule_skips_patterns_and_paths():
    assert TOOL_NAME.findall("`seg-train`, the `seg-*` tools, seg_node/x, a/seg-y, seg-benchmark hd") == [
        "seg-train", "seg-benchmark"]


ROBUSTNESS = {name: card.metrics["robustness"] for name, card in CARDS.items() if "robustness" in card.metrics}
#: a robustness table's columns: the card figure each quotes, and to how many decimals
ROBUSTNESS_COLUMNS = {"clean": (("clean",), 1), "mPC": (("mpc",), 1), "rPC": (("rpc",), 1),
                      "rPC sev 1-3": (("rpc_sev1_3",), 1), "unseen rPC": (("unseen", "rpc"), 1),
                      "worst at sev 1 (of clean)": (("worst_sev1", "relative"), 0),
                      **{family: (("families", family, "rpc"), 0)
                         for family in ("noise", "blur", "weather", "digital")}}


def robustness_row_problems(name: str, row: dict[str, str]) -> list[str]:
    record, problems = ROBUSTNESS[name], []
    for header, (keys, digits) in ROBUSTNESS_COLUMNS.items():
        value = record
        for key in keys:
            value = value[key]
        if f"{first_number(row[header]):.{digits}f}" != f"{value:.{digits}f}":
            problems.append(f"{name} {header}: {row[header]}, the card {value:.{digits}f}")
    worst = record["worst_sev1"]["corruption"].replace("_", " ")
    if not row["worst at sev 1 (of clean)"].startswith(worst):
        problems.append(f"{name}: worst at sev 1 is {worst}")
    return problems


@pytest.mark.parametrize("doc", DOCS)
def test_the_whole_split_robustness_tables_quote_the_cards(doc):
    """Each row of a table headed `model (whole test split)` quotes its card's metrics.robustness, measured on all
    233 test frames; docs/results.md's table has a row for every card that records robustness."""
    quoted, problems = set(), []
    for table in markdown_tables(doc_text(doc)):
        header = [plain(c) for c in table[0]]
        if "whole test split" not in header[0]:
            continue
        assert set(ROBUSTNESS_COLUMNS) <= set(header), (doc, sorted(set(ROBUSTNESS_COLUMNS) - set(header)))
        for row in table[1:]:
            cells = dict(zip(header, map(plain, row)))
            name = cells[header[0]].split()[0]
            assert name in ROBUSTNESS and ROBUSTNESS[name]["frames"] == 233, (doc, name)
            problems += robustness_row_problems(name, cells)
            quoted.add(name)
    assert not problems, (doc, problems)
    if doc == "docs/results.md":
        assert quoted == set(ROBUSTNESS), sorted(set(ROBUSTNESS) - quoted)


def test_the_per_corruption_table_quotes_the_cards_mean_over_severities():
    """docs/results.md's table headed `corruption` has a row for every corruption and a column for every card
    that records robustness, each cell the card's mIoU averaged over the severities."""
    [table] = [t for t in markdown_tables(doc_text("docs/results.md")) if plain(t[0][0]) == "corruption"]
    header = [plain(c) for c in table[0]]
    assert set(ROBUSTNESS) <= set(header), sorted(set(ROBUSTNESS) - set(header))
    rows = {re.match(r"\w+", plain(row[0])).group(): dict(zip(header, map(plain, row))) for row in table[1:]}
    for name, record in ROBUSTNESS.items():
        assert set(rows) == set(record["corruptions"]), name
        for corruption, by_severity in record["miou"].items():
            mean = sum(by_severity.values()) / len(by_severity)
            assert f"{first_number(rows[corruption][name]):.1f}" == f"{mean:.1f}", (name, corruption)


def test_the_results_quote_the_defaults_confidence_calibration():
    default = CARDS[Path(DEFAULT_MODEL_CARD).stem]
    text = doc_text("docs/results.md")
    assert default.confidence.threshold is not None
    for figure in (f"{default.confidence.threshold}", f"{default.confidence.temperature:.3f}"):
        assert figure in text, figure


def package_versions() -> tuple[str, str]:
    setup = re.search(r'^\s*version="([^"]+)",', (REPO / "setup.py").read_text(), re.M).group(1)
    return setup, ET.parse(REPO / "package.xml").getroot().findtext("version")


def test_the_pruning_studys_headline_in_the_docs_is_drawn_from_its_results_json():
    results = load_results(REPO / "docs" / "study" / "results.json")
    headline = headline_table(results)
    assert (REPO / "docs" / "study" / "headline.md").read_text() == headline, "seg-sweep plot docs/study/results.json"
    rows = [line for line in headline.splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(results["models"])
    for doc in ("README.md", "docs/pruning_study.md"):
        assert all(row in doc_text(doc) for row in rows), doc


def test_setup_py_and_package_xml_declare_one_version_with_its_changelog_section():
    """CHANGELOG.md has a section per version, newest first, the package's version among them."""
    setup, package_xml = package_versions()
    assert setup == package_xml, (setup, package_xml)
    versions = re.findall(r"^## \[(\d+)\.(\d+)\.(\d+)\]", doc_text("CHANGELOG.md"), re.M)
    assert ".".join(versions[0]) == setup, (versions[0], setup)
    numbers = [tuple(map(int, version)) for version in versions]
    assert numbers == sorted(set(numbers), reverse=True), versions


#: wording that narrates when or how the work was done instead of naming a version
NARRATION = re.compile(r"\b(?:this|previous|earlier) session\b|\bsession \d+|\bsittings?\b|"
                       r"\bbefore this (?:work|change)\b|\b(?:this|previous) releases?\b", re.I)


def repository_text_files() -> list[Path]:
    """The repository's text files (git's view when there is one: tracked and not ignored), without this file,
    which holds the phrases."""
    if (REPO / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split("\0")
        paths = [REPO / name for name in listed if name]
    else:
        skipped = {"build", "install", "log", "out", "results", "runs"}
        paths = [p for p in REPO.rglob("*") if not any(
            part.startswith(".") or part in skipped for part in p.relative_to(REPO).parts)]
    texts = []
    for path in paths:
        if path.is_file() and path.resolve() != Path(__file__).resolve():
            with path.open("rb") as file:
                if b"\0" not in file.read(8192):
                    texts.append(path)
    return texts


def test_no_text_in_the_repository_narrates_how_the_work_was_done():
    """Docs, docstrings, comments and cards say what and why, and name versions where history matters."""
    found = [f"{path.relative_to(REPO)}:{number}: {match.group()}" for path in repository_text_files()
             for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             for match in NARRATION.finditer(line)]
    assert not found, found


@pytest.mark.parametrize(("text", "narrates"), [
    ("tried this session", True), ("Session 10's default", True), ("in the previous release's run", True),
    ("the numbered sittings", True), ("before this work the frame took 130 ms", True), ("until this release", True),
    ("an ONNX Runtime session", False), ("a pytest fixture of session scope", False), ("capture.release()", False),
    ("0.1.8's default", False), ("the last release with Python 3.10 wheels", False)])
def test_the_narration_rule_flags_narration_only(text, narrates):
    assert bool(NARRATION.search(text)) == narrates
