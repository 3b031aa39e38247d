from cotransfer import io, stages
from cotransfer.config import Study

if __name__ == "__main__":  # the llm method starts vLLM
    stages.start_job(snakemake)
    stages.strip(Study.from_dict(snakemake.config), snakemake.wildcards.dataset, snakemake.params.group,
                 snakemake.input.itemsfile, list(snakemake.output), io.provenance_from_snakemake(snakemake),
                 manifest=snakemake.input.get("model"))
    stages.end_job()  # outputs are written: skip vLLM's slow in-process teardown
