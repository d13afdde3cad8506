<?php
// The PHP-FPM app of the real-apps VM: `?sleep=S` writes the child's pid to /tmp/inflight and
// stays busy S seconds (a busy loop, not sleep(): a signal would cut a sleep short and hide
// whether the child waits for the request to end); every request keeps 256 KB for the life of
// the child.
$GLOBALS['kept'][] = str_repeat('x', 256 * 1024);
if (isset($_GET['sleep'])) {
    file_put_contents('/tmp/inflight', getmypid());
    $end = microtime(true) + (int)$_GET['sleep'];
    while (microtime(true) < $end) {
    }
}
echo 'ok ' . getmypid() . "\n";
