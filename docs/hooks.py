"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

The benchmark charts are written by ``python -m benchmarks.compare`` into
benchmarks/results/, outside docs/; they are added to the site here as they
are, so the pages show the files the benchmarks wrote (never a copy that
could drift).
"""

import os

from mkdocs.structure.files import File

#: (file in the repository, its path in the site)
_EXTERNAL = [
    ("benchmarks/results/latest-workers.png", "img/benchmarks/latest-workers.png"),
    ("benchmarks/results/latest-payload.png", "img/benchmarks/latest-payload.png"),
]


def on_files(files, config):
    root = os.path.dirname(config.config_file_path)
    for source, uri in _EXTERNAL:
        files.append(File.generated(config, uri, abs_src_path=os.path.join(root, source)))
    return files
