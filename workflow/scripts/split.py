from cotransfer import io, stages
from cotransfer.config import Study

stages.setup_logging(snakemake.log[0])
stages.split(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, snakemake.params.group,
             list(snakemake.output), io.provenance_from_snakemake(snakemake))
