from cotransfer import io, stages
from cotransfer.config import Study

if __name__ == "__main__":  # vLLM may spawn workers that re-import this file
    stages.start_job(snakemake)
    wc = snakemake.wildcards
    stages.generate(Study.from_dict(snakemake.config), wc.dataset, wc.model, snakemake.input.itemsfile,
                    snakemake.input.model, dict(snakemake.output.items()),
                    io.provenance_from_snakemake(snakemake))
    stages.end_job()  # outputs are written: skip vLLM's slow in-process teardown
