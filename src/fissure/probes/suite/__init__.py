"""A probe run: attacks x policy requests x decodings through one model, judged and counted.

- :mod:`.config`: what a run does (:class:`SuiteConfig`), attack groups;
- :mod:`.plan`: every generation with a stable key (capability twins, benign twins, attacks);
- :mod:`.run`: generate what is missing, judge, save each batch, white-box probes;
- :mod:`.summary`: capability control, ASR per attack and mode, adaptive ASR, over-refusal;
- :mod:`.compare`: McNemar between two runs, judging saved replies again.
"""

from .compare import compare, load_run, normalise_replies, rejudge
from .config import DEFAULT_ATTACKS, SAMPLES_FILE, SuiteConfig, load_config, resolve_attacks
from .plan import Item, build_prompt, plan
from .run import ProbeRun, judge_sample, run_suite
from .summary import capability_table, k_label, summarise

__all__ = ["DEFAULT_ATTACKS", "SAMPLES_FILE", "Item", "ProbeRun", "SuiteConfig", "build_prompt", "capability_table",
           "compare", "judge_sample", "k_label", "load_config", "load_run", "normalise_replies", "plan",
           "rejudge", "resolve_attacks", "run_suite", "summarise"]
