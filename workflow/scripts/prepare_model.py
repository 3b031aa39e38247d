from pathlib import Path

from cotransfer import stages
from cotransfer.config import Study

stages.start_job(snakemake)
out = Path(snakemake.output[0])
stages.prepare_model(Study.from_dict(snakemake.config), snakemake.wildcards.anymodel,
                     str(out.with_suffix("")), str(out))
