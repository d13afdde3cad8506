# The Rack app of the real-apps VM (Puma, Unicorn): `?sleep=S` writes the worker's pid to
# /tmp/inflight and sleeps (the apps_facts probe); every request keeps 256 KB.
KEPT = []
run lambda { |env|
  KEPT << ('x' * (256 * 1024))
  if (m = env['QUERY_STRING'].to_s.match(/sleep=(\d+)/))
    File.write('/tmp/inflight', Process.pid.to_s)
    sleep m[1].to_i
  end
  [200, { 'Content-Type' => 'text/plain' }, ["ok #{Process.pid} #{KEPT.size}\n"]]
}
