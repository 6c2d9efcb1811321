"""`k5tune configure`: the terminal wizard that writes config/config.json and the dataset file.

Existing files are read tolerantly and their values offered as defaults; keys the wizard does not ask
about are kept (files.py). Every answer is checked with the real schema (the code `k5tune train` uses)
and asked again with its message; both files are validated together with `load_config` before anything
is written (answers.py), then written atomically (files.py). The memory preset comes from the
estimator's recommender (memory.py asks k5tune/estimate/presets.py); flow.py holds the question order.

Terminal I/O goes through a `Terminal` (terminal.py) so tests can script the answers; `--yes` is a
terminal that answers every question with its default.
"""

from k5tune.wizard.flow import DEFAULT_DIRECTORY, Wizard, WizardResult, run_command, run_wizard
from k5tune.wizard.memory import GpuInfo, detect_gpu
from k5tune.wizard.terminal import Aborted, BadAnswer, ConsoleTerminal, DefaultsTerminal, Terminal

__all__ = ["DEFAULT_DIRECTORY", "Aborted", "BadAnswer", "ConsoleTerminal", "DefaultsTerminal", "GpuInfo", "Terminal",
           "Wizard", "WizardResult", "detect_gpu", "run_command", "run_wizard"]
