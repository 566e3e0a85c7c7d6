module rekey.invalid/tlscheck

go 1.19
