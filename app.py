"""The Hugging Face Space's entry point (README front matter: ``app_file: app.py``).

The Space runs ``python app.py``: the app starts as ``python -m explorer`` does with no
arguments, its settings from the environment or the defaults (``GSE_PRESET``, ``GSE_STORE``,
``GSE_LABELS``, and Gradio's ``GRADIO_SERVER_NAME`` / ``GRADIO_SERVER_PORT``, which a Space sets):
:func:`explorer.app.open_explorer` builds the context, :func:`explorer.app.build_app` the page,
and it is launched with the same queue, CSS and footer as from the command line.
"""

import sys

from explorer.__main__ import main

if __name__ == "__main__":
    sys.exit(main([]))
