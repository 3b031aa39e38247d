from cotransfer import io, stages
from cotransfer.config import Study

stages.start_job(snakemake)
stages.strip_report(Study.from_dict(snakemake.config), snakemake.output.table, snakemake.output.csv,
                    io.provenance_from_snakemake(snakemake))
