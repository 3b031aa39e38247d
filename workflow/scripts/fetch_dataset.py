from pathlib import Path

from cotransfer import stages
from cotransfer.config import Study

stages.start_job(snakemake)
stages.fetch_dataset(Study.from_dict(snakemake.config), snakemake.wildcards.dataset,
                     str(Path(snakemake.output[0]).parent))
