DESCRIPTION="small GET while idle keep-alive connections are held open (default 10 000); reports RSS per idle connection"
TOOL=wrk
REQUEST_PATH=/
CONNECTIONS=64
HOLD_IDLE=1    # holds --idle connections (default 10000)
