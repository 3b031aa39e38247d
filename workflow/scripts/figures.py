from pathlib import Path

from cotransfer import stages
from cotransfer.config import Study

stages.setup_logging(snakemake.log[0])
out = dict(snakemake.output.items())
stages.figures(Study.from_dict(snakemake.config), dict(snakemake.input.items()), str(Path(out["listing"]).parent),
               [p for k, p in out.items() if k != "listing"])
