"""Every Ray call framefleet makes goes through this module (Ray Serve's rule for its
replicas), so the state machines around it can be tested without a cluster and the Ray
surface we rely on is in one place."""

from __future__ import annotations

from typing import Any


class ActorGone(Exception):
    """The actor that was to run the call died or cannot be reached."""


class RayAdapter:
    """A thin, stateless wrapper over the Ray API."""

    def remote_class(self, cls: type) -> Any:
        import ray

        return ray.remote(cls)

    def create(self, remote_cls: Any, options: dict[str, Any], *args: Any) -> Any:
        return remote_cls.options(**options).remote(*args)

    def call(self, actor: Any, method: str, *args: Any) -> Any:
        return getattr(actor, method).remote(*args)

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
            raise ActorGone(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        except rex.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def wait_ready(self, refs: list[Any], timeout: float) -> list[Any]:
        import ray

        return list(ray.get(refs, timeout=timeout))

    def kill(self, actor: Any) -> None:
        import ray

        ray.kill(actor, no_restart=True)
