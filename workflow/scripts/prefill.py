from cotransfer import io, stages
from cotransfer.config import Study

if __name__ == "__main__":  # vLLM may spawn workers that re-import this file
    stages.setup_logging(snakemake.log[0])
    wc = snakemake.wildcards
    stages.prefill(Study.from_dict(snakemake.config), wc.dataset, wc.model, wc.condition,
                   wc.get("variant", "stripped"), wc.get("source", wc.model), snakemake.input.itemsfile,
                   snakemake.input.cots, snakemake.input.model, snakemake.output[0],
                   io.provenance_from_snakemake(snakemake))
