# Unicorn of the real-apps VM: 2 workers on 127.0.0.1:8004.
worker_processes 2
listen '127.0.0.1:8004'
timeout 60
