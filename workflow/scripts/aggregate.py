from cotransfer import io, stages
from cotransfer.config import Study

stages.start_job(snakemake)
stages.aggregate(Study.from_dict(snakemake.config), list(snakemake.input), dict(snakemake.output.items()),
                 io.provenance_from_snakemake(snakemake))
