from cotransfer import io, stages
from cotransfer.config import Study

stages.start_job(snakemake)
stages.split(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, snakemake.params.group,
             list(snakemake.output), io.provenance_from_snakemake(snakemake))
