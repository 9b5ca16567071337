# GDP parts shared by the R50 configs: the package and the GDP hook (50 % of the
# FLOPs, widths rounded to multiples of 8 for hardware-friendly shapes).
custom_imports = dict(imports=['gdp_det'], allow_failed_imports=False)
custom_hooks = [
    dict(type='GDPHook', flops_target=0.5, min_channels=8, channel_divisor=8, export=True)
]
