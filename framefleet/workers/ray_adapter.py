"""Every Ray call framefleet makes goes through this module (Ray Serve's rule for its
replicas), so the state machines around it can be tested without a cluster and the Ray
surface we rely on is in one place."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
_RAY_PRINTER, _OUR_PRINTER = "ray_print_logs", "framefleet"  # the worker lines' handlers

log = logging.getLogger(__name__)


def _quiet(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Token authentication is enabled")


class ActorGone(Exception):
    """The actor that was to run the call died (`dead`) or cannot be reached for now (not
    `dead`: unavailable, or the call's object was lost). When it died in its __init__,
    init_error is the exception it raised there ("module.Type: message")."""

    def __init__(self, reason: str, init_error: str | None = None, dead: bool = True) -> None:
        super().__init__(reason)
        self.init_error = init_error
        self.dead = dead


def _gone(exc: Exception) -> ActorGone:
    """Ray's message starts with what happened to the actor; for a failed __init__ it ends
    with the exception raised there, which is the part worth reporting."""
    from ray import exceptions as rex

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if getattr(exc, "actor_init_failed", False) and lines:
        return ActorGone(f"its __init__ raised {lines[-1]}", init_error=lines[-1])
    dead = not isinstance(exc, rex.ActorUnavailableError | rex.ObjectLostError)
    return ActorGone(lines[0] if lines else type(exc).__name__, dead=dead)


class RayAdapter:
    """A thin, stateless wrapper over the Ray API."""

    def remote_class(self, cls: type) -> Any:
        import ray

        return ray.remote(cls)

    def create(self, remote_cls: Any, options: dict[str, Any], *args: Any) -> Any:
        return remote_cls.options(**options).remote(*args)

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method).remote(*args)

    def put(self, value: Any) -> Any:
        """ray.put: the value copied into the object store; its ref, passed to `call`, is
        the value in the callee."""
        import ray

        return ray.put(value)

    def get(self, ref: Any, timeout: float | None = None) -> Any:
        """ray.get, with Ray's errors turned into ours: TimeoutError when not ready yet,
        ActorGone when the actor died, and an exception raised inside the task as itself."""
        import ray
        from ray import exceptions as rex

        try:
            return ray.get(ref, timeout=timeout)
        except rex.GetTimeoutError:
            raise TimeoutError from None
        except (
            rex.RayActorError,
            rex.ActorUnavailableError,
            rex.WorkerCrashedError,
            rex.OwnerDiedError,
            rex.ObjectLostError,
            rex.NodeDiedError,
        ) as exc:
            raise _gone(exc) from exc
        except rex.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def wait_ready(self, refs: list[Any], timeout: float) -> list[Any]:
        import ray

        return list(ray.get(refs, timeout=timeout))

    def actor_id(self, actor: Any) -> str:
        """The actor's id (hex): the same for every copy of its handle."""
        return str(actor._actor_id.hex())

    def kill(self, actor: Any) -> None:
        import ray

        ray.kill(actor, no_restart=True)

    def done(self, refs: list[Any]) -> list[Any]:
        """The refs among `refs` that are finished (successfully or not), without waiting."""
        import ray

        if not refs:
            return []
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        return list(ready)

    def node_id(self) -> str:
        """The node the calling actor (or driver) runs on, in hex ('' outside Ray)."""
        import ray

        if not ray.is_initialized():
            return ""
        return str(ray.get_runtime_context().get_node_id())

    # -- the driver's view of the cluster ------------------------------------------------

    def init(
        self,
        address: str | None,
        runtime_env: dict[str, Any] | None = None,
        temp_dir: str | None = None,
        worker_lines: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """Connect to a cluster (address) or start a local one (None) in temp_dir. Ray's
        INFO lines and its notice that token authentication is on (it stays on) are not
        shown: the driver's output lands in the middle of `framefleet run`'s progress.

        With `worker_lines`, what this job's actors write on their stdout and stderr (their
        log lines) is shipped to this driver, one batch (ip, pid, actor_name, is_err, lines)
        a call, in place of Ray's own printer, which prefixes each line with "(Actor pid=..)"
        and merges alike lines of different actors ("[repeated 2x across cluster]"). Ray
        has no public hook for it: its dispatcher's handler is swapped."""
        import ray

        logging.getLogger(_TOKEN_NOTICE_LOGGER).addFilter(_quiet)
        local = {"_temp_dir": temp_dir} if address is None and temp_dir else {}
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=worker_lines is not None,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
            **local,
        )
        if worker_lines is not None:
            try:
                from ray._private.ray_logging import global_worker_stdstream_dispatcher as lines

                lines.remove_handler(_RAY_PRINTER)
                lines.remove_handler(_OUR_PRINTER)
                lines.add_handler(_OUR_PRINTER, worker_lines)
            except (ImportError, AttributeError):  # another Ray: its own printer stays
                log.warning("the actors' lines are printed by Ray itself", exc_info=True)

    def shutdown(self) -> None:
        import ray

        ray.shutdown()
        with contextlib.suppress(ImportError, AttributeError):
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as lines

            lines.remove_handler(_OUR_PRINTER)

    def gcs_address(self) -> str:
        import ray

        return str(ray.get_runtime_context().gcs_address)

    def alive_nodes(self) -> int:
        return len(self.alive_node_ids())

    def alive_node_ids(self) -> set[str]:
        """The ids (hex) of the nodes the GCS holds alive."""
        import ray

        return {str(node["NodeID"]) for node in ray.nodes() if node.get("Alive")}

    def draining_nodes(self) -> set[str]:
        """The nodes being drained (preemption, scale-down, SIGTERM to `ray start`): Ray
        schedules nothing new there and ends them at their deadline. Ray Train and Ray Data
        read the same private call."""
        from ray._private.state import state

        return set(state.get_draining_nodes())

    def available(self) -> dict[str, float]:
        import ray

        return {k: float(v) for k, v in ray.available_resources().items()}

    def total(self) -> dict[str, float]:
        """The resources of the cluster's alive nodes, used or not."""
        import ray

        return {k: float(v) for k, v in ray.cluster_resources().items()}

    def request_resources(self, bundles: list[dict[str, float]]) -> None:
        """Tell Ray's autoscaler the shape the fleet wants: one bundle an actor, the whole
        fleet (those running included: the autoscaler packs the bundles as if the nodes
        were empty). Each call replaces the last; an empty list withdraws it. Under
        autoscaler v2 a request the node groups cannot hold whole adds no node at all."""
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)

    def infeasible_request(self) -> list[tuple[dict[str, float], int]]:
        """The bundles (with their counts) of the request that autoscaler v2 found its node
        groups cannot hold whole, so that it adds no node for it; none under v1 (which adds
        what it can) or when the autoscaler found it feasible."""
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        reply = GetClusterStatusReply()
        reply.ParseFromString(GcsClient(self.gcs_address()).get_cluster_status(timeout_s=5))
        return [
            ({k: float(v) for k, v in r.request.resources_bundle.items()}, int(r.count))
            for constraint in reply.autoscaling_state.infeasible_cluster_resource_constraints
            for r in constraint.resource_requests
        ]
