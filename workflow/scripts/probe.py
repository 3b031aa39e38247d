from cotransfer import io, stages
from cotransfer.config import Study

if __name__ == "__main__":  # vLLM may spawn workers that re-import this file
    stages.start_job(snakemake)
    stages.probe(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, snakemake.wildcards.model,
                 snakemake.input.itemsfile, snakemake.input.model, list(snakemake.output),
                 io.provenance_from_snakemake(snakemake), transfer=list(snakemake.input.transfer))
    stages.end_job()  # outputs are written: skip vLLM's slow in-process teardown
