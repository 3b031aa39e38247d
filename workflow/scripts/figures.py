from pathlib import Path

from cotransfer import stages
from cotransfer.config import Study

stages.start_job(snakemake)
out = dict(snakemake.output.items())
stages.figures(Study.from_dict(snakemake.config), dict(snakemake.input.items()), str(Path(out["listing"]).parent),
               [p for k, p in out.items() if k != "listing"])
