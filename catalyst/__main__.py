"""``python -m catalyst ...``: the ``catalyst`` command without its console script.

A PaaS that installs only the hash-locked ``requirements.txt`` never installs the project itself,
so the ``catalyst`` script does not exist there; the Procfile's release phase runs
``python -m catalyst db upgrade`` from the repository root instead.
"""

from catalyst.cli import main

if __name__ == "__main__":
    main(prog_name="catalyst")
