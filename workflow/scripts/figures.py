from cotransfer import stages
from cotransfer.config import Study

stages.setup_logging(snakemake.log[0])
stages.figures(Study.from_dict(snakemake.config), snakemake.input.consistency, snakemake.input.accuracy,
               dict(snakemake.output.items()))
