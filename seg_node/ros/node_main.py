"""The shared `main()` of this package's rclpy nodes: start-up errors exit 1 with a message, Ctrl-C exits 0, and
so does a node whose work is done (a callback raises NodeFinished).

Under `ros2 launch`, a terminal Ctrl-C reaches a node twice (the terminal's SIGINT, then launch's forwarded
one), often while it is cleaning up. rclpy's own signal handler (installed by rclpy.init) shuts the context
down on the first; this module's Python handler turns that first signal into KeyboardInterrupt and ignores
every later SIGINT or SIGTERM, so cleanup (joining the inference worker, destroying the node) is never
interrupted and no traceback is printed.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NodeFinished(Exception):
    """Raised by a node's callback when it has nothing more to do (a finite source ended): the node exits 0."""


def ignore_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def _stop(signum, frame) -> None:
    """The first stop signal: shutdown begins; later ones must not interrupt it."""
    ignore_stop_signals()
    raise KeyboardInterrupt


def spin_node(make_node: Callable[[], Node], args: list[str] | None, label: str,
              startup_errors: tuple[type[Exception], ...]) -> int:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _stop)
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except startup_errors as exc:
        print(f"[{label}] FATAL: {exc}", file=sys.stderr, flush=True)
        return 1
    except (KeyboardInterrupt, ExternalShutdownException, NodeFinished):
        pass
    except Exception:
        if rclpy.ok():
            raise  # a defect while running: show it
        # else a callback was mid-call (publishing) when the signal shut the context down: that is shutdown
    finally:
        ignore_stop_signals()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
