from cotransfer import io, stages
from cotransfer.config import Study

stages.start_job(snakemake)
stages.preference(Study.from_dict(snakemake.config), snakemake.input.summary, snakemake.input.accuracy,
                  dict(snakemake.output.items()), io.provenance_from_snakemake(snakemake))
