"""What ``ragserve up`` does with an InferenceService patched through its control endpoint.

KServe's controller, for the local processes: a patch that brings a new
predictor spec with a canary (Knative mode: a changed ``spec.predictor`` with
``canaryTrafficPercent``, as ``ragserve canary start`` sends; Standard mode: a
``spec.canary[]`` entry) starts the next revision as a child process and, once
it is ready, gives it its share of traffic; until then the status reports it as
the latest created revision, not ready, and every request goes to the stable
one. Later patches move the split, promote (the canary becomes stable, the old
stable stops) or roll back (the canary stops). A revision that fails to start is
reported in the status (``Ready`` False, naming it) and the stable one keeps
serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from ..manifests.bundle import deployment_mode
from ..manifests.problem import ManifestError
from .ingress import ComponentIngress, Revision
from .plan import spec_hash

if TYPE_CHECKING:
    from .runner import LocalRunner

logger = logging.getLogger("ragserve.up")


class RevisionController:
    def __init__(self, runner: LocalRunner):
        self.runner = runner
        self.starting: dict[str, tuple[str, asyncio.Task]] = {}  # ingress -> (revision, its start task)
        # ingress -> (revision, why it did not start, its spec's hash: the same spec is not started again)
        self.failed: dict[str, tuple[str, str, str]] = {}

    # -- read --------------------------------------------------------------------
    def get(self, name: str) -> dict | None:
        """The object as last patched, with a status shaped like KServe's."""
        r = self.runner
        obj = r.objects.get(name)
        if obj is None:
            return None
        out = json.loads(json.dumps(obj))
        components = {}
        for role in ("predictor", "transformer"):
            route = r.plan.route(name, role)
            if route is None:
                continue
            ingress = r.ingresses[route.name]
            stable = ingress.stable.name
            latest = ingress.canary.name if ingress.canary else stable
            created = (self.starting.get(ingress.name) or self.failed.get(ingress.name) or (latest,))[0]
            components[role] = {
                "url": route.url,
                "traffic": ingress.traffic(),
                "latestCreatedRevision": created,
                "latestReadyRevision": latest,
                "latestRolledoutRevision": stable,
            }
            if ingress.canary:
                components[role]["previousRolledoutRevision"] = stable
        failed, starting = self.failed.get(f"{name}-predictor"), self.starting.get(f"{name}-predictor")
        ready = {"type": "Ready", "status": "True"}
        if failed:
            ready = {"type": "Ready", "status": "False", "reason": "RevisionFailed", "message": failed[1]}
        elif starting:
            ready = {"type": "Ready", "status": "Unknown", "reason": "RevisionStarting",
                     "message": f"{starting[0]} is starting"}
        status = {
            "url": r.plan.entry(name).url,
            "address": {"url": r.plan.entry(name).url},
            "components": components,
            "conditions": [ready],
            "observedGeneration": obj["metadata"].get("generation", 1),
            # KServe reports Knative mode as "Serverless"
            "deploymentMode": "Serverless" if deployment_mode(obj) == "Knative" else deployment_mode(obj),
        }
        predictor = r.ingresses.get(f"{name}-predictor")
        if predictor and predictor.canary and (obj.get("spec") or {}).get("canary"):
            status["canaryStatuses"] = [{"name": predictor.canary.name, "trafficPercent": predictor.canary_percent,
                                         "ready": True}]
        out["status"] = status
        return out

    def revision_stats(self) -> dict:
        return {
            name: [
                {"revision": rev.name, "requests": rev.stats.requests, "errors": rev.stats.errors,
                 "p95_s": rev.stats.p95_s()}
                for rev in (ing.stable, ing.canary) if rev is not None
            ]
            for name, ing in self.runner.ingresses.items()
        }

    # -- reconcile ---------------------------------------------------------------
    def apply(self, name: str, new: dict) -> None:
        """Reconcile a patched InferenceService; ``ValueError`` (the API server's 422) refuses it."""
        r = self.runner
        old = r.objects[name]
        ingress = r.ingresses[f"{name}-predictor"]
        spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
        predictor = spec.get("predictor") or {}
        key = f"{name}/predictor"
        standard = bool(old_spec.get("canary") or spec.get("canary"))
        wanted = _wanted_canary(spec, standard)
        if wanted is not None:
            comp, percent = wanted
            # Standard mode names its canary; in Knative mode it is a spec other than the last rolled out
            recorded = r.store.get(key)
            fresh = standard or (recorded is not None and recorded["hash"] != spec_hash(comp))
            if ingress.canary is None and ingress.name not in self.starting and fresh and self._untried(ingress, comp):
                self._start(new, ingress, comp)
            else:
                ingress.set_split(ingress.canary, percent)
        else:
            if ingress.canary is not None or ingress.name in self.starting:
                # Standard mode: promote carries the canary's changes into spec.predictor (and keeps the
                # stable's own scheduling and autoscaling); rollback leaves spec.predictor as it was
                promoted = not standard or spec_hash(predictor) != spec_hash(old_spec.get("predictor") or {})
                self._end(ingress, promote=promoted, key=key, spec=predictor)
            self.failed.pop(ingress.name, None)  # the canary is over: so is its failure
        meta = new.setdefault("metadata", {})
        meta["resourceVersion"] = str(int(old["metadata"]["resourceVersion"]) + 1)
        meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        r.objects[name] = new

    def _untried(self, ingress: ComponentIngress, comp: dict) -> bool:
        """A spec whose revision failed is not started again by the next patch (a rollback to 0 %, say)."""
        failed = self.failed.get(ingress.name)
        return failed is None or failed[2] != spec_hash(comp)

    def _start(self, isvc: dict, ingress: ComponentIngress, comp: dict) -> None:
        """Plan the next revision now (a bad spec is refused), start it in the background."""
        generation = int(ingress.stable.name.rsplit("-", 1)[1]) + 1
        revision = f"{ingress.name}-{generation:05d}"
        try:
            proc = self.runner.planner.revision(isvc, "predictor", comp, revision)
        except ManifestError as exc:
            raise ValueError(str(exc)) from None
        self.failed.pop(ingress.name, None)
        task = asyncio.get_running_loop().create_task(self._roll_out(ingress, proc, spec_hash(comp)),
                                                      name=f"start {revision}")
        self.starting[ingress.name] = (revision, task)
        logger.info("%s: starting %s for the canary", ingress.name, revision)

    async def _roll_out(self, ingress: ComponentIngress, proc, spec_key: str) -> None:
        r = self.runner
        try:
            await r.start_revision(proc)
        except Exception as exc:  # reported in the status; the stable revision keeps serving
            logger.error("%s: %s did not become ready: %s", ingress.name, proc.revision, exc)
            why = f"{proc.revision} did not become ready: {str(exc).splitlines()[0]}"
            self.failed[ingress.name] = (proc.revision, why, spec_key)
            r.stop_revision(proc.revision)
            return
        finally:
            self.starting.pop(ingress.name, None)
        ingress.set_split(Revision(proc.revision, proc.url), self._wanted_percent(ingress))
        logger.info("%s: %s ready, %d%% of traffic", ingress.name, proc.revision, ingress.canary_percent)
        r.write_state()

    def _wanted_percent(self, ingress: ComponentIngress) -> int:
        """The canary's share in the object now (patches may have moved it while the revision started)."""
        spec = self.runner.objects[ingress.name.removesuffix("-predictor")].get("spec") or {}
        wanted = _wanted_canary(spec, standard=bool(spec.get("canary")))
        return wanted[1] if wanted else 0

    def _end(self, ingress: ComponentIngress, *, promote: bool, key: str, spec: dict) -> None:
        """Promotion: the canary becomes stable and the old stable stops. Rollback: the canary stops."""
        if ingress.name in self.starting:
            revision, task = self.starting[ingress.name]
            if promote:
                raise ValueError(f"{revision} is still starting: promote it once it is ready "
                                 "(`ragserve canary status` shows when)")
            task.cancel()
            self.starting.pop(ingress.name)
            self.runner.stop_revision(revision)
            logger.info("%s: rolled back %s before it was ready", ingress.name, revision)
            return
        canary, stable = ingress.canary, ingress.stable
        leaving = stable if promote else canary
        if promote:
            ingress.stable = canary
            self.runner.store.record(key, spec, int(canary.name.rsplit("-", 1)[1]))
        ingress.set_split(None, 0)
        logger.info("%s: %s %s", ingress.name, "promoted" if promote else "rolled back", canary.name)
        self.runner.stop_revision(leaving.name)  # records the state


def _wanted_canary(spec: dict, standard: bool) -> tuple[dict, int] | None:
    """The canary ``spec`` asks for (its predictor spec and share of traffic); None when none."""
    if standard:
        entries = spec.get("canary") or []
        if not entries:
            return None
        return entries[0].get("predictor") or {}, _percent(entries[0].get("trafficPercent", 0),
                                                            "spec.canary[0].trafficPercent")
    predictor = spec.get("predictor") or {}
    if "canaryTrafficPercent" not in predictor:
        return None
    return ({k: v for k, v in predictor.items() if k != "canaryTrafficPercent"},
            _percent(predictor["canaryTrafficPercent"], "spec.predictor.canaryTrafficPercent"))


def _percent(value, field: str) -> int:
    percent = int(value)
    if not 0 <= percent <= 100:
        raise ValueError(f"{field}: {percent} is not 0-100")
    return percent
