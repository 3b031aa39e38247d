from cotransfer import io, stages

stages.setup_logging(snakemake.log[0])
stages.split(snakemake.input[0], snakemake.output[0], io.provenance_from_snakemake(snakemake))
