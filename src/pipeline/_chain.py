"""Building a stage's attempt chain, once per stage and run, from the links of each concern.

    events -> middleware -> resources -> timeout -> output check -> runner -> execute

The core links live in `pipeline._attempt`, the flow-control links in `pipeline._flow`, the
output check (`validate_outputs=True`) in `pipeline._outputs`; this module only decides which
a stage needs and keeps an unobserved chain for the next run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from pipeline._attempt import events_link, execute_link, plain_link, timeout_link
from pipeline._flow import middleware_links, resources_link
from pipeline._outputs import output_check_link
from pipeline.definition import ATTEMPT_CHAIN_ATTR
from pipeline.runners._batch import owns_item_timeouts

if TYPE_CHECKING:
    from pipeline._attempt import Handler
    from pipeline._env import RunEnv
    from pipeline.definition import StageDefinition


def build_chain(sdef: StageDefinition, env: RunEnv) -> Handler:
    """The attempt chain of `sdef` in the run `env` (outermost link first in the docstring).

    A chain depends only on the stage and the executor's settings and clock, so it is kept on
    the definition and reused by the next run of the same executor: building it costs about
    0.3 us a stage (1 us observed; benchmarks/overhead.py W1/W2 and the observer rows).
    """
    plain = plain_link(sdef, env)
    if plain is not None:
        return plain
    observed = env.reporter.enabled
    kept = sdef.__dict__.get(_KEPT)
    # The executor's settings (runners, resources, middleware, validate_outputs, observers) are
    # fixed at its construction, so its token and the clock say whether the kept chain fits;
    # links read the run's reporter per call, so the chain outlives the run that built it.
    key = env.chain_key  # None: an environment built by hand, whose chains are never kept
    if kept is not None and key is not None and kept[0] is key and kept[1] is env.clock:
        chain: Handler = kept[2]
        return chain
    handler = execute_link(sdef, env)
    if env.validate_outputs:
        handler = output_check_link(sdef, env, handler)
    if sdef.timeout_ms is not None and not owns_item_timeouts(sdef, env):
        handler = timeout_link(sdef, env, handler)
    if sdef.uses:
        handler = resources_link(sdef, env, handler)
    if env.middleware:
        handler = middleware_links(sdef, env, handler)
    if observed:
        handler = events_link(sdef, env, handler)
    if key is not None:
        sdef.__dict__[_KEPT] = (key, env.clock, handler)  # not a field: eq/hash ignore it
    return handler


_KEPT: Final = ATTEMPT_CHAIN_ATTR
"""Where `build_chain` keeps an unobserved chain on its `StageDefinition` (see there)."""
