"""Reports people read: Markdown tables and PNG plots of dense vs compressed, from measured results.

The reports live beside what they report on: the search's in :mod:`monai_prune.search.report`, the demo's in
:mod:`monai_prune.demo.report`; this module keeps their public names where users import them."""

from ._markdown import markdown_table  # noqa: F401
from .demo.report import plot_accuracy_vs_latency, write_demo_report  # noqa: F401
from .search.report import (candidates_table, pareto_front, plot_overlay, plot_pareto, plot_per_class,  # noqa: F401
                            write_search_report)
