from cotransfer import io, stages
from cotransfer.config import Study

stages.start_job(snakemake)
stages.score(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, snakemake.input.itemsfile,
             list(snakemake.input.generations), snakemake.output[0], io.provenance_from_snakemake(snakemake))
