"""``monai-prune search`` on the built-in synthetic CT: a re-export of :mod:`monai_prune.demo.search_frontend`, where
it lives, kept so that ``from monai_prune.search_workflow import run_search_demo`` keeps working."""

from .demo.search_frontend import (  # noqa: F401 (the public names of this module)
    CLASS_NAMES,
    SearchDemoConfig,
    check_search_demo,
    distillation_finetune,
    latency_workload,
    per_class_evaluator,
    quick_search_config,
    run_search_demo,
)

__all__ = ["CLASS_NAMES", "SearchDemoConfig", "check_search_demo", "distillation_finetune", "latency_workload",
           "per_class_evaluator", "quick_search_config", "run_search_demo"]
