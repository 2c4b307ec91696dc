"""Which seg_node parameters a launch file's arguments set: only the arguments given, so an argument left
empty keeps the value from params_file instead of overwriting it with the launch file's default.

Kept free of launch imports so it runs (and is tested) without launch_ros.
"""

from __future__ import annotations

#: launch argument -> seg_node parameter
LAUNCH_PARAMETERS = {"image": "input_topics", "transport": "input_transport", "backend": "backend",
                     "device": "device", "model": "model"}


def parameter_overrides(arguments: dict[str, str]) -> dict[str, str | list[str]]:
    """{parameter: value} for each launch argument that is not empty; `image` may list several
    comma-separated topics, one camera each."""
    overrides: dict[str, str | list[str]] = {}
    for argument, parameter in LAUNCH_PARAMETERS.items():
        value = arguments.get(argument, "").strip()
        if value:
            overrides[parameter] = value
    if "input_topics" in overrides:
        overrides["input_topics"] = [topic.strip() for topic in overrides["input_topics"].split(",") if topic.strip()]
    return overrides


def truthy(value: str) -> bool:
    """A boolean launch argument as launch's IfCondition reads it: true/1 or false/0, any case."""
    text = value.strip().lower()
    if text not in ("true", "1", "false", "0"):
        raise ValueError(f"expected true or false, got {value!r}")
    return text in ("true", "1")
