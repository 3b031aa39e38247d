from pathlib import Path

from cotransfer import io, stages
from cotransfer.config import Study

stages.start_job(snakemake)
raw = str(Path(snakemake.input.raw).parent) if "raw" in snakemake.input.keys() else None
stages.make_items(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, raw,
                  snakemake.output[0], io.provenance_from_snakemake(snakemake))
