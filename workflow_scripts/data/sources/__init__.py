"""Sources of raw scans: each one builds ``data/raw/<source>/`` in the PanSegData raw layout.

    osf        PanSegData from the OSF API v2 (t1.zip, t2.zip, name-mapping files, LICENSE.txt)
    url        one archive at a URL with a pinned checksum (e.g. the Decathlon's Task07_Pancreas.tar)
    local      a folder the user already has (nnU-Net raw, Decathlon or PanSegData layout)
    synthetic  the embedded demo (``workflow_scripts.data.synthetic``)

Shared pieces: ``download`` (resumable, retried, checksum-verified downloads), ``archive`` (safe
extraction of zip and tar files) and ``layout`` (conversion of other layouts into
``imagesTr/<CENTER>_<NNNN>_0000.nii.gz`` + ``labelsTr/<CENTER>_<NNNN>.nii.gz`` + a name mapping).
Downloads are kept in a cache folder outside ``data/raw`` so that a failed or re-run job resumes
instead of starting again (Snakemake deletes a job's outputs before it runs and after it fails).
"""
